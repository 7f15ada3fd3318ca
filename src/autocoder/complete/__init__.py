"""Code completion with a trained model, in four parts:

- prompt.py: what the model sees of a request (its prompt format, token healing, user text as text);
- decode.py: the decoding loop over the forward pass, its stops and logits processors;
- completer.py: `Completer`, a model and its prompts, what everything completes through;
- folder.py and load.py: checking a model folder, and loading a model by folder, Hub id or registry.

The CLI and the REPL (`autocoder complete`, `autocoder interact`) are cli.py's.
"""

from autocoder.complete.completer import Completer
from autocoder.complete.decode import MAX_TEMPERATURE, Completion, Decoding, StopCheck, cut_at
from autocoder.complete.prompt import Prompt

__all__ = ["MAX_TEMPERATURE", "Completer", "Completion", "Decoding", "Prompt", "StopCheck", "cut_at"]
