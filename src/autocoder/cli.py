"""`autocoder`: run one pipeline stage by hand, or use a trained model.

`dvc repro` runs the stages through stages/*.py; `autocoder <stage>` runs the same library code
for debugging one stage. Heavy imports (torch, transformers, mlflow) happen inside each command.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import threading

from autocoder.errors import exit_on_user_error
from autocoder.params import DEFAULT_PARAMS, load_params

# `autocoder <stage>`: stage name -> module whose run(params) implements it (stages/<stage>.py,
# which dvc.yaml runs, imports the same function)
STAGES = {
    "clone": "autocoder.sources",
    "pretrained": "autocoder.pretrained",
    "segment": "autocoder.segment",
    "split": "autocoder.split",
    "finetune": "autocoder.train",
    "evaluate": "autocoder.evaluate",
}


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" where a default means something and the help does not already say it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autocoder", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(DEFAULT_PARAMS), help="params file (default: params.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in STAGES:
        sub.add_parser(name, help=f"run the {name} stage alone (as `dvc repro` would)")

    def add_model_args(p: argparse.ArgumentParser, sampling: bool = True) -> None:
        p.add_argument("--model", help="model folder or Hub id (default: the registry's champion)")
        p.add_argument(
            "--max-new-tokens",
            type=int,
            default=None,
            help="most tokens generated; a completion usually ends sooner, at a blank line or eos "
            "(default: params.yaml's evaluate.max_new_tokens, as the model was evaluated)",
        )
        if not sampling:
            return
        p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
        p.add_argument(
            "--top-p",
            type=float,
            default=1.0,
            help="nucleus sampling: sample from the most likely tokens that make up this probability",
        )
        p.add_argument(
            "--repetition-penalty",
            type=float,
            default=None,
            help="loop guard (1.0 = off; default: params.yaml's evaluate.repetition_penalty, as the model "
            "was evaluated)",
        )

    def add_gate_args(p: argparse.ArgumentParser) -> None:
        """The confidence gate's options, as `serve` and `lsp` take them."""
        p.add_argument(
            "--min-confidence",
            type=float,
            default=None,
            help="hide completions whose mean token log-probability is below this (default: the threshold the "
            "evaluate stage fitted for the registered model; none for a model folder)",
        )
        p.add_argument("--no-gate", action="store_true", help="show every completion: no confidence gate or filters")

    comp = sub.add_parser("complete", help="complete code from a prompt", formatter_class=_DefaultsFormatter)
    comp.add_argument("prompt", help="the code context to complete")
    comp.add_argument("--lang", required=True, help="language (a key of params.yaml languages)")
    add_model_args(comp)
    suffix = comp.add_mutually_exclusive_group()
    suffix.add_argument("--suffix", help="the code after the cursor: fill in the middle (a model with FIM tokens)")
    suffix.add_argument("--suffix-file", type=argparse.FileType("r"), help="the code after the cursor, from a file")
    comp.add_argument("--num", type=int, default=1, help="number of completions (more than 1 needs --temperature > 0)")
    comp.add_argument("--json", action="store_true", help="print completions with their confidence as JSON")

    inter = sub.add_parser(
        "interact", help="a REPL: type code, get completions (change_lang, exit)", formatter_class=_DefaultsFormatter
    )
    inter.add_argument("--lang", default=None, help="start in this language")
    add_model_args(inter)

    serve = sub.add_parser(
        "serve",
        help="serve completions over HTTP: OpenAI /v1/completions, llama.cpp /infill and /completion",
        formatter_class=_DefaultsFormatter,
    )
    serve.add_argument("--model", help="model folder or Hub id (default: the registry's champion)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--queue-size", type=int, default=16, help="requests waiting at most; more get a 503")
    serve.add_argument(
        "--api-key",
        help="require `Authorization: Bearer KEY` on every request but /health (default: $AUTOCODER_API_KEY, "
        "else none); prefer the variable, which other users cannot read in the process list",
    )
    add_gate_args(serve)

    lsp = sub.add_parser(
        "lsp",
        help="a language server on stdin/stdout (textDocument/completion, inlineCompletion) for an editor to start",
        formatter_class=_DefaultsFormatter,
    )
    add_model_args(lsp, sampling=False)  # greedy: the gate's threshold was fitted on greedy completions
    add_gate_args(lsp)

    export = sub.add_parser(
        "export",
        help="export a model folder to ONNX (model.onnx): completion then starts in about a second, without torch",
    )
    export.add_argument("--model", required=True, help="model folder (saved with save_pretrained, safetensors)")
    return parser


def _interrupt_the_main_thread_on_ctrl_c() -> None:
    """Ctrl-C must wake the REPL's main thread, which waits in readline; but the kernel may hand a
    SIGINT to any thread that does not block it (BLAS, torch, ONNX Runtime start their own), and
    then nothing wakes that wait. So SIGINT is blocked here, before those threads exist (they
    inherit the mask), and one thread takes it with sigwait and sends the main thread a SIGUSR1,
    which Python turns into KeyboardInterrupt there: exit code 130, also while the model loads."""

    def raise_interrupt(signum, frame):
        raise KeyboardInterrupt

    main_thread = threading.main_thread().ident
    signal.signal(signal.SIGUSR1, raise_interrupt)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})

    def forward() -> None:
        while True:
            signal.sigwait({signal.SIGINT})
            signal.pthread_kill(main_thread, signal.SIGUSR1)

    threading.Thread(target=forward, name="ctrl-c", daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    args = _build_parser().parse_args(argv)
    with exit_on_user_error(f"autocoder {args.command}"):
        if args.command in STAGES:
            importlib.import_module(STAGES[args.command]).run(load_params(args.params))
        elif args.command == "export":
            from pathlib import Path

            from autocoder.runtime import export_onnx

            print(f"autocoder export: wrote {export_onnx(Path(args.model))}")
        elif args.command == "serve":
            from autocoder.serve.http import serve_command

            serve_command(args)
        elif args.command == "lsp":
            from autocoder.serve.lsp import lsp_command

            lsp_command(args)
        else:
            if args.command == "interact":
                _interrupt_the_main_thread_on_ctrl_c()
            from autocoder import complete

            getattr(complete, f"{args.command}_command")(args)


if __name__ == "__main__":
    main()
