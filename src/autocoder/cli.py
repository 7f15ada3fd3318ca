"""`autocoder`: run one pipeline stage by hand, or use a trained model.

`dvc repro` runs the stages through stages/*.py; `autocoder <stage>` runs the same library code
for debugging one stage. Heavy imports (torch, transformers, mlflow) happen inside each command.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading

from autocoder.errors import UserError, exit_on_user_error
from autocoder.params import DEFAULT_PARAMS, generation_settings, load_params

HISTORY_FILE = ".autocoder_history"  # the REPL's, in the home folder
EXIT_INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT, as shells report it

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
        p.add_argument(
            "--cache-slots",
            type=int,
            default=4,
            help="prompts whose key/value cache is kept (0: none): a request runs the model only after the "
            "prefix it shares with one of them, its context window anchored on a line so that keystrokes share it",
        )

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
    profile = sub.add_parser(
        "profile",
        help="write a profile's changes (profiles/NAME.yaml) into the params file, its comments kept; "
        "then `dvc repro` or `dvc exp run`",
    )
    profile.add_argument("name", nargs="?", help="the profile (none: list them)")
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


def _completer_for(args, has_text: bool = True):
    """The model for `complete` or `interact`, once the arguments are known to be good: a bad one is
    refused before the model loads (seconds)."""
    from autocoder.complete.decode import check_generation_args, check_loop_guard
    from autocoder.complete.load import load_completer, params_for, quiet_model_loading

    params = params_for(args)
    evaluated = generation_settings(params.evaluate if params else None)  # what the model was measured with
    if args.max_new_tokens is None:
        args.max_new_tokens = evaluated["max_new_tokens"]
    if args.repetition_penalty is None:
        args.repetition_penalty = evaluated["repetition_penalty"]
    check_generation_args(args.max_new_tokens, args.temperature, args.top_p, getattr(args, "num", 1))
    check_loop_guard(args.repetition_penalty, 0)
    if args.lang is not None and params is not None and args.lang not in params.languages:
        raise UserError(
            f"--lang {args.lang!r}: not a language of {args.params} (it has: {', '.join(params.languages)})"
        )
    if not has_text:
        raise UserError("the prompt is empty: give the code to complete (or a --suffix to fill in before)")
    quiet_model_loading()
    return load_completer(args.model, params)


def _complete_command(args) -> None:
    suffix = args.suffix_file.read() if args.suffix_file else args.suffix
    completer = _completer_for(args, has_text=bool(args.prompt.strip()) or bool(suffix))
    completions = completer.complete(
        args.lang,
        args.prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        num=args.num,
        suffix=suffix,
        repetition_penalty=args.repetition_penalty,
    )
    if args.json:
        import json

        print(
            json.dumps(
                {"lang": args.lang, "prompt": args.prompt, "completions": [c.summary() for c in completions]}, indent=2
            )
        )
    else:  # a completion never contains a blank line, so one separates several
        print("\n\n".join(c.text for c in completions))


def _ask_language(completer) -> str:
    while True:
        lang = input(f"language ({', '.join(completer.languages)}): ").strip()
        if lang in completer.languages:
            return lang
        print(f"unknown language {lang!r}")


def _interact_command(args) -> None:
    """The seed's REPL: choose a language, type code, read the completion; `change_lang`, `exit`.
    Ctrl-D (end of input) leaves it like `exit`; Ctrl-C leaves it too, with exit code 130 (as a shell
    reports an interrupted command), also while the model loads or a completion runs."""
    try:
        _repl(args)
    except EOFError:  # Ctrl-D, or the end of piped input
        print(file=sys.stderr)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None


def _repl(args) -> None:
    import readline
    from pathlib import Path

    completer = _completer_for(args)
    history = Path.home() / HISTORY_FILE
    if history.exists():
        readline.read_history_file(history)
    readline.set_auto_history(False)  # added below, also when the lines come from a pipe
    if args.lang is not None:
        completer.prompt_ids(args.lang, "")  # an unknown language fails here, before the REPL
    try:
        lang = args.lang or _ask_language(completer)
        print("type code to complete it; 'change_lang' switches the language, 'exit' quits")
        while (context := input(f"{lang}>>> ")) != "exit":
            readline.add_history(context)
            if context == "change_lang":
                lang = _ask_language(completer)
            elif context.strip():
                [completion] = completer.complete(
                    lang,
                    context,
                    max_new_tokens=args.max_new_tokens,
                    temperature=args.temperature,
                    top_p=args.top_p,
                    repetition_penalty=args.repetition_penalty,
                )
                print(context + completion.text)
    finally:
        readline.set_history_length(1000)
        readline.write_history_file(history)


def _profile_command(args) -> None:
    from pathlib import Path

    from autocoder import profiles

    if args.name is None:
        print("\n".join(profiles.names()))
        return
    changed = profiles.apply_profile(args.name, Path(args.params))
    print(f"{args.params}: profile {args.name} changed {len(changed)} keys ({', '.join(changed) or 'none'})")
    print("run it with `dvc repro` (or `dvc exp run`); `git checkout params.yaml` goes back")


def main(argv: list[str] | None = None) -> None:
    args = _build_parser().parse_args(argv)
    with exit_on_user_error(f"autocoder {args.command}"):
        if args.command in STAGES:
            importlib.import_module(STAGES[args.command]).run(load_params(args.params))
        elif args.command == "profile":
            _profile_command(args)
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
            {"complete": _complete_command, "interact": _interact_command}[args.command](args)


if __name__ == "__main__":
    main()
