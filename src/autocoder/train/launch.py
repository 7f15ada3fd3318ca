"""`accelerate launch` for the finetune stage, with the flags that this machine needs.

dvc.yaml runs `python stages/finetune.py --num_processes N`, which calls main() here with its
arguments and itself: `accelerate launch --num_processes N stages/finetune.py`, every argument an
`accelerate launch` argument for accelerate's own launcher (`python -m autocoder.train.launch
--num_processes N stages/finetune.py` does the same). Plain
`accelerate launch --num_processes N` cannot be written into dvc.yaml for every machine: without
GPUs it starts one process whatever N is (its multi-CPU mode needs mpirun), and `--multi_gpu`,
which starts N processes through torchrun, refuses N = 1. So, unless the user ran
`accelerate config` (then their config decides, as it would for `accelerate launch`), this adds:

- N > 1: --multi_gpu (torchrun), one process per GPU (more processes than GPUs is an error), or,
  without GPUs, N CPU processes (the training script then uses DDP over gloo);
- without GPUs: the cores shared out between the processes (accelerate's default is 1 thread each);
- --mixed_precision from finetune.mixed_precision, and the defaults accelerate would warn about.

Bad input fails here, once, in one line, before any process starts.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from subprocess import CalledProcessError

import torch

from autocoder.errors import UserError, exit_on_user_error
from autocoder.params import Params, load_params

LAUNCHED_ENV = ("LOCAL_RANK", "ACCELERATE_DYNAMO_BACKEND")  # set by torchrun / accelerate's launchers


def launched_by_accelerate() -> bool:
    return any(name in os.environ for name in LAUNCHED_ENV)


def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Does this CPU compute in bf16 natively (avx512_bf16 or amx_bf16)? There, bf16 autocast trains
    about 2x faster than fp32; elsewhere it is emulated and slower, so 'auto' keeps fp32."""
    try:
        flags = next((line for line in Path(cpuinfo).read_text().splitlines() if line.startswith("flags")), "")
    except OSError:  # not Linux
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


def resolve_mixed_precision(setting: str) -> str:
    """'auto': bf16 on GPUs that support it, fp16 on other GPUs; bf16 on CPUs with native bf16, else no."""
    if setting != "auto":
        return setting
    if not torch.cuda.is_available():
        return "bf16" if cpu_has_bf16() else "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def _user_config(config_file: str | None) -> bool:
    from accelerate.commands.config import default_config_file

    return config_file is not None or os.path.isfile(default_config_file)


def hardware_flags(num_processes: int, mixed_precision: str, config_file: str | None = None) -> list[str]:
    """The `accelerate launch` flags for this machine (see the module docstring)."""
    if _user_config(config_file):
        return []
    gpus = torch.cuda.device_count()
    flags = [
        "--num_machines",
        "1",
        "--dynamo_backend",
        "no",
        "--mixed_precision",
        resolve_mixed_precision(mixed_precision),
    ]
    if gpus and num_processes > gpus:
        raise UserError(f"finetune.num_processes: {num_processes} processes, but this machine has {gpus} GPUs")
    if num_processes > 1:
        flags += ["--multi_gpu", "--main_process_port", "0"]  # 0: a free port, so runs can share the machine
    if not gpus and "OMP_NUM_THREADS" not in os.environ:
        flags += ["--num_cpu_threads_per_process", str(max(1, len(os.sched_getaffinity(0)) // num_processes))]
    return flags


def accelerate_launch(argv: list[str], mixed_precision: str) -> None:
    """Run `accelerate launch <hardware flags> <argv>`; exit with the failing process' code (it has
    already said why) when one fails."""
    from accelerate.commands.launch import launch_command, launch_command_parser

    parser = launch_command_parser()
    args = parser.parse_args(argv)
    flags = hardware_flags(args.num_processes or 1, mixed_precision, args.config_file)
    print("finetune: accelerate launch " + " ".join(flags + argv), flush=True)
    try:
        launch_command(parser.parse_args(flags + argv))  # argv last: the user's own flags win
    except CalledProcessError as e:
        sys.exit(e.returncode)
    except Exception as e:  # torchrun's ChildFailedError
        failures = getattr(e, "failures", None)
        if not failures:
            raise
        sys.exit(next(iter(failures.values())).exitcode)


def relaunch(params: Params) -> None:
    """Run the stage in finetune.num_processes processes (`autocoder finetune` with N > 1)."""
    with tempfile.TemporaryDirectory() as tmp:
        params_file = Path(tmp) / "params.json"  # JSON is YAML: load_params reads it as it is
        params_file.write_text(params.model_dump_json())
        accelerate_launch(
            [
                "--num_processes",
                str(params.finetune.num_processes),
                "-m",
                "autocoder.cli",
                "--params",
                str(params_file),
                "finetune",
            ],
            params.finetune.mixed_precision,
        )


def main(argv: list[str] | None = None) -> None:
    from autocoder.train import check_before_launch

    with exit_on_user_error("autocoder finetune"):
        params = load_params()
        check_before_launch(params)
        accelerate_launch(sys.argv[1:] if argv is None else argv, params.finetune.mixed_precision)


if __name__ == "__main__":
    main()
