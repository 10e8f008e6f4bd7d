"""One clear message when the Hugging Face Hub cannot serve a model, tokenizer or dataset.

`transformers` reports an unreachable hub, a gated repository or a misspelt id as a long chain of HTTP and cache
errors (with retries logged in between). Every litprune load of a hub id (a parent's config and weights, a
`FromPretrained` checkpoint, the run's tokenizer) runs inside `hub_errors`, which turns the four cases a user can
act on into one `HubAccessError` that says what to do:

- offline (`HF_HUB_OFFLINE=1`) and not in the local cache: download it where the hub is reachable, or unset it;
- hub unreachable (no network, a proxy, a wrong `HF_ENDPOINT`) and not in the local cache;
- a gated repository without a token that has access: request access, then `hf auth login` or `HF_TOKEN`;
- no such repository (or a private one without a token), or an id that is not a valid `namespace/name`.

Any other error passes through unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from litprune.utils.errors import error_chain

LOGIN = "log in with `hf auth login` (or `huggingface-cli login`), or set HF_TOKEN to an access token"
"""How to give the hub a token, in every message that needs one."""


class HubAccessError(OSError):
    """The Hugging Face Hub could not serve what a run asked for; the message says why and what to do."""


@contextmanager
def hub_errors(name: str, what: str = "model") -> Iterator[None]:
    """Run a hub load (`from_pretrained`, `load_dataset`); turn hub access failures into one `HubAccessError`.

    Args:
        name: the hub id (or local path) being loaded, named in the message.
        what: what it is, for the message: "model", "parent", "tokenizer", "dataset", ...

    Raises:
        HubAccessError: offline or unreachable hub (and nothing cached), gated repository without access, no such
            repository, or an id that is neither a local directory nor a valid hub id. Other errors pass unchanged.
    """
    try:
        yield
    except Exception as error:
        message = hub_error_message(error, name, what)
        if message is None:
            raise
        raise HubAccessError(message) from error


def hub_error_message(error: BaseException, name: str, what: str = "model") -> str | None:
    """The message of `hub_errors` for `error` (or any error in its cause chain), or None when it is not a hub case."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    chain = error_chain(error)

    def found(*types: type[BaseException]) -> bool:
        return any(isinstance(e, types) for e in chain)

    subject = f"{what} {name!r}"
    endpoint = constants.ENDPOINT  # HF_ENDPOINT when set
    download = (
        f"download it where the hub is reachable (`hf download {name}`) and copy the Hugging Face cache (HF_HOME) "
        "here, or point at a local directory written by save_pretrained"
    )
    if found(GatedRepoError):
        return (
            f"The {subject} is a gated repository on the Hugging Face Hub and this machine has no access to it. "
            f"Accept its licence at https://huggingface.co/{name}, then {LOGIN} (a token of the account that "
            "was granted access)."
        )
    if found(RepositoryNotFoundError):
        return (
            f"The {subject} was not found on the Hugging Face Hub ({endpoint}), and there is no local directory "
            f"of that name. Check the id (e.g. meta-llama/Llama-3.2-1B) or the path; a private repository also "
            f"needs a token: {LOGIN}."
        )
    if found(HFValidationError):
        return (
            f"The {subject} is neither a local directory nor a valid Hugging Face Hub id (namespace/name). Check "
            "the path (e.g. that the run which writes it has finished) or the hub id."
        )
    if constants.HF_HUB_OFFLINE and found(OfflineModeIsEnabled, LocalEntryNotFoundError, ConnectionError):
        return (
            f"The {subject} is neither a local directory nor in the local Hugging Face cache, and HF_HUB_OFFLINE=1 "
            f"forbids downloading it. Unset HF_HUB_OFFLINE on a machine with access to the hub, or {download}."
        )
    if found(LocalEntryNotFoundError, ConnectionError):
        return (
            f"Cannot reach the Hugging Face Hub at {endpoint} to download the {subject}, which is neither a local "
            f"directory nor in the local Hugging Face cache. Check the network (proxy, HF_ENDPOINT), or {download}."
        )
    return None
