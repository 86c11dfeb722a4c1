"""Named model sizes and the paper's sampling settings. Torch-free (the workflow reads them
while parsing the Snakefile); `rar.model` and `rar.generate` build on these tables."""

from __future__ import annotations

# RAR Table 1 / the official release. Parameter counts at codebook 1024, 1000 classes and 256
# tokens, as released. The tiny sizes train on a CPU (demo and tests).
RAR_CONFIGS: dict[str, dict] = {
    "rar_b": dict(hidden_size=768, num_layers=24, num_heads=16, mlp_size=3072),  # 260,923,648
    "rar_l": dict(hidden_size=1024, num_layers=24, num_heads=16, mlp_size=4096),  # 461,668,352
    "rar_xl": dict(hidden_size=1280, num_layers=32, num_heads=16, mlp_size=5120),  # 955,425,024
    "rar_xxl": dict(hidden_size=1408, num_layers=40, num_heads=16, mlp_size=6144),  # 1,498,520,704
    "rar_tiny": dict(hidden_size=64, num_layers=2, num_heads=4, mlp_size=256),
    "rar_mini": dict(hidden_size=128, num_layers=4, num_heads=4, mlp_size=512),
}

# The paper's sampling settings per model size (official README_RAR.md and configs):
# temperature, classifier-free guidance scale and the pow-cosine schedule's exponent.
SAMPLING_PRESETS: dict[str, dict] = {
    "rar_b": dict(guidance_scale=16.0, guidance_power=2.75, temperature=1.0),
    "rar_l": dict(guidance_scale=15.5, guidance_power=2.5, temperature=1.02),
    "rar_xl": dict(guidance_scale=6.9, guidance_power=1.5, temperature=1.02),
    "rar_xxl": dict(guidance_scale=8.0, guidance_power=1.2, temperature=1.02),
}
