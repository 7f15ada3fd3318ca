"""DVC stage 'finetune': see dvc.yaml. Reads its section of params.yaml; the work is in src/autocoder."""
from autocoder.cli import stage_main

if __name__ == "__main__":
    stage_main("finetune")
