"""`accelerate launch` for the finetune stage, with the flags that this machine needs.

dvc.yaml runs `python stages/finetune.py --num_processes N`, which calls main() here with its
arguments and itself: `accelerate launch --num_processes N stages/finetune.py`, every argument an
`accelerate launch` argument for accelerate's own launcher (`python -m autocoder.train.launch
--num_processes N stages/finetune.py` does the same). Plain
`accelerate launch --num_processes N` cannot be written into dvc.yaml for every machine: without
GPUs it starts one process whatever N is (its multi-CPU mode needs mpirun), and `--multi_gpu`,
which starts N processes through torchrun, refuses N = 1. So this adds, for each setting that the
accelerate config in use (finetune.accelerate_config, `--config_file`, or the one `accelerate
config` wrote) does not make itself:

- N > 1: --multi_gpu (torchrun), one process per GPU (more processes than GPUs is an error), or,
  without GPUs, N CPU processes (the training script then uses DDP over gloo);
- without GPUs: the cores shared out between the machine's processes (accelerate's default is 1
  thread each);
- --mixed_precision from finetune.mixed_precision, and the defaults accelerate would warn about;
- several machines: the rendezvous timeout, finetune.rendezvous_timeout.

Several machines (num_machines > 1 in the config): every machine runs this with the same params and
data, and its own `--machine_rank`; N is the processes of all machines together, as for accelerate.
A machine other than the first waits at most finetune.rendezvous_timeout seconds for the first
one's address to answer, and the first waits as long for the others.

Bad input fails here, once, in one line, before any process starts.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from subprocess import CalledProcessError

import torch
import yaml

from autocoder.errors import UserError, exit_on_user_error
from autocoder.params import Params, load_params

LAUNCHED_ENV = ("LOCAL_RANK", "ACCELERATE_DYNAMO_BACKEND")  # set by torchrun / accelerate's launchers
DEFAULT_PORT = 29500  # accelerate's and torchrun's


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


def accelerate_config(config_file: str | None) -> dict:
    """The settings of the accelerate config in use: config_file, else the one `accelerate config`
    wrote, else none."""
    from accelerate.commands.config import default_config_file

    path = Path(config_file) if config_file else Path(default_config_file)
    if not config_file and not path.is_file():
        return {}
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"accelerate config {path}: cannot read it ({str(e).splitlines()[0]})") from None
    if not isinstance(config, dict):
        raise UserError(f"accelerate config {path}: not a mapping of accelerate settings")
    return config


def hardware_flags(num_processes: int, mixed_precision: str, config: dict, rendezvous_timeout: int) -> list[str]:
    """The `accelerate launch` flags for this machine, for the settings `config` does not make
    (see the module docstring)."""
    gpus = torch.cuda.device_count()
    if config.get("distributed_type") == "FSDP" and not gpus:
        # accelerate (1.15) chooses FSDP only on GPUs; on the CPU it would train DDP without a word
        raise UserError("accelerate config: distributed_type FSDP needs GPUs, and this machine has none")
    machines = int(config.get("num_machines", 1))
    if num_processes % machines:
        raise UserError(f"finetune.num_processes: {num_processes} processes do not divide among {machines} machines")
    per_machine = num_processes // machines
    if gpus and per_machine > gpus:
        raise UserError(f"finetune.num_processes: {per_machine} processes on a machine with {gpus} GPUs")
    flags = []
    if "num_machines" not in config:
        flags += ["--num_machines", "1"]
    if "dynamo_config" not in config:
        flags += ["--dynamo_backend", "no"]
    if "mixed_precision" not in config:
        flags += ["--mixed_precision", resolve_mixed_precision(mixed_precision)]
    if num_processes > 1 and "distributed_type" not in config:
        flags += ["--multi_gpu"]
    if num_processes > 1 and machines == 1 and "main_process_port" not in config:
        flags += ["--main_process_port", "0"]  # 0: a free port, so runs can share the machine
    if machines > 1 and "rdzv_conf" not in config:
        flags += ["--rdzv_conf", f"timeout={rendezvous_timeout}"]
    if not gpus and "OMP_NUM_THREADS" not in os.environ and "num_cpu_threads_per_process" not in config:
        flags += ["--num_cpu_threads_per_process", str(max(1, len(os.sched_getaffinity(0)) // per_machine))]
    return flags


def wait_for_main_machine(host: str, port: int, timeout: float, machine_rank: int) -> None:
    """A machine other than the first: wait until the first one's rendezvous address answers, and
    say which address did not (torchrun itself would retry it silently, for ever)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=min(5.0, timeout)).close()
            return
        except OSError as e:
            if time.monotonic() + 1 > deadline:
                raise UserError(
                    f"machine {machine_rank} cannot reach the main machine at {host}:{port} within "
                    f"{timeout:g} s (finetune.rendezvous_timeout; {e.strerror or e}): is machine 0 running, "
                    "and is the port open?"
                ) from None
            time.sleep(1)


def accelerate_launch(argv: list[str], params: Params) -> None:
    """Check the inputs, then run `accelerate launch <flags> <argv>`; exit with the failing process'
    code (it has already said why) when one fails."""
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed import DistError

    from autocoder.train import check_before_launch

    ft, parser = params.finetune, launch_command_parser()
    args = parser.parse_args(argv)
    config_flags = ["--config_file", ft.accelerate_config] if ft.accelerate_config and not args.config_file else []
    config = accelerate_config(args.config_file or ft.accelerate_config)
    flags = config_flags + hardware_flags(args.num_processes or 1, ft.mixed_precision, config, ft.rendezvous_timeout)
    machines = int(args.num_machines or config.get("num_machines", 1))
    rank = int(args.machine_rank if args.machine_rank is not None else config.get("machine_rank", 0))
    host = args.main_process_ip or config.get("main_process_ip")
    port = int(args.main_process_port or config.get("main_process_port") or DEFAULT_PORT)
    if machines > 1 and not host:
        raise UserError(f"finetune.accelerate_config: {machines} machines, but no main_process_ip for machine 0")
    check_before_launch(params, tracking_store=rank == 0)  # only machine 0 logs to MLflow
    if machines > 1 and rank > 0:
        wait_for_main_machine(host, port, ft.rendezvous_timeout, rank)
    print("finetune: accelerate launch " + " ".join(flags + argv), flush=True)
    try:
        launch_command(parser.parse_args(flags + argv))  # argv last: the user's own flags win
    except CalledProcessError as e:
        sys.exit(e.returncode)
    except DistError as e:  # the rendezvous: machine 0 waited for the others in vain
        raise UserError(
            f"machine {rank} of {machines}: the rendezvous at {host}:{port} failed within "
            f"finetune.rendezvous_timeout ({ft.rendezvous_timeout} s): {str(e).splitlines()[0]}"
        ) from None
    except Exception as e:  # torchrun's ChildFailedError
        failures = getattr(e, "failures", None)
        if not failures:
            raise
        sys.exit(next(iter(failures.values())).exitcode)


def relaunch(params: Params) -> None:
    """Run the stage through accelerate (`autocoder finetune` with more than one process or an
    accelerate config of its own)."""
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
            params,
        )


def main(argv: list[str] | None = None) -> None:
    with exit_on_user_error("autocoder finetune"):
        accelerate_launch(sys.argv[1:] if argv is None else argv, load_params())


if __name__ == "__main__":
    main()
