"""The offline demo's own pieces: what stands in for the paper's resources where nothing can be
downloaded (the EfficientNet-Lite0 feature extractor in place of torch-fidelity's Inception
weights, whose metrics carry its name so they are never mistaken for the paper's). Nothing in
the paper's pipeline imports this package except to offer the demo's choices by name."""
