"""Wire formats: the V2 (Open Inference Protocol) tensor codec and the KServe V1 view."""
