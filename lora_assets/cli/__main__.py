"""`python -m lora_assets.cli …`: the same as the `lora-assets` console script."""

from lora_assets.cli import main

main()
