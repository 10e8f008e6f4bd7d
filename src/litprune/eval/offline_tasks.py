"""Offline lm-eval tasks generated from held-out text, for evaluation where the hub cannot be reached.

The paper's eight zero-shot tasks download their data from the Hugging Face hub. These tasks need nothing but
text: by default the held-out `test` split of litprune's embedded corpus (standard-library files never used for
training), or any documents you pass. Both are four-way multiple choice scored by lm-eval itself (acc and
acc_norm), so a tiny model trained on a laptop gets accuracy numbers from the same harness as the 8B run.

| task | example |
|---|---|
| `litprune_next_line` | the 4 lines before a line of a file; choose the true next line among 4 (3 from other files) |
| `litprune_next_span` | the 48 words before a position; choose the true next 8 words among 4 (3 from other files) |

Generation is deterministic: the same documents, task, parameters and seed give byte-identical data. Examples are
drawn with a seeded `random.Random` over the documents in the order given, and the data file lists them in a
seeded shuffled order, not in document order: lm-eval's `limit: N` keeps the first N examples, which are then a
random sample of all documents rather than the first files alphabetically. A different `seed` gives a different
sample (and a different variant, below).

Each generated variant is an lm-eval task of its own, named after everything that shapes its data:
`<task>_<corpus>_n<max_examples>_s<seed>_g<generator version>` (e.g. `litprune_next_line_3fa2b1c0_n500_s0_g2`,
`<corpus>` = the first 8 hex digits of the documents' sha256), so a 100-example variant made by another run can
never stand in for a 500-example one. Inside litprune the tasks keep their short names (`litprune_next_line`,
the `offline` preset); the record of an evaluation names the variant that ran. On disk:

    cache_root()/eval_tasks/corpus-<documents sha256[:16]>/     one folder per set of documents: the include path
        litprune_next_line_3fa2b1c0_n500_s0_g2/                 one folder per variant
            litprune_next_line_3fa2b1c0_n500_s0_g2.yaml         lm-eval task (from `task_templates/`)
            data.jsonl, manifest.json

One `--include_path` (the corpus folder) therefore serves every variant to lm-eval's own CLI, which honours only
the last `--include_path` flag it is given.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from litprune.eval.text_sources import Document, embedded_documents

NEXT_LINE = "litprune_next_line"
NEXT_SPAN = "litprune_next_span"
GENERATOR_VERSION = 2
"""Bump when generation changes, so cached data from an older generator is never reused.

Version 2 lists the examples in a seeded shuffled order; version 1 kept document order."""

DEFAULT_MAX_EXAMPLES = 500
_MAX_DRAWS_PER_DISTRACTOR = 50


class OfflineTaskError(ValueError):
    """Documents that cannot make an offline task (too few documents or lines)."""


@dataclass(frozen=True)
class OfflineTask:
    """A generated offline task on disk.

    Attributes:
        name: the lm-eval task name of this variant (`litprune_next_line_<corpus>_n<N>_s<seed>_g<version>`).
        base_name: the name litprune users write (`litprune_next_line` or `litprune_next_span`).
        yaml_path: the task's YAML (pass it, or `include_path`, to lm-eval).
        data_path: the examples, one JSON object per line.
        num_examples: examples in the data file.
        fingerprint: sha256 of generator version, parameters and documents.
        num_documents: documents the examples were drawn from.
        corpus_fingerprint: sha256 of the documents alone (shared by every variant made from them).
        seed: seed of the sampling and of the example order.
    """

    name: str
    base_name: str
    yaml_path: Path
    data_path: Path
    num_examples: int
    fingerprint: str
    num_documents: int
    corpus_fingerprint: str
    seed: int

    @property
    def directory(self) -> Path:
        """This variant's own folder (an include path that holds this task only)."""
        return self.yaml_path.parent

    @property
    def include_path(self) -> Path:
        """The folder of every variant made from the same documents: one `--include_path` for lm-eval's CLI."""
        return self.yaml_path.parent.parent


def next_line_examples(
    documents: Sequence[Document],
    max_examples: int = DEFAULT_MAX_EXAMPLES,
    seed: int = 0,
    context_lines: int = 4,
    num_choices: int = 4,
    min_chars: int = 8,
    max_chars: int = 160,
) -> list[dict[str, Any]]:
    """Examples for `litprune_next_line`.

    A target is a line of `min_chars`..`max_chars` characters (stripped length at least `min_chars`) with at
    least one non-blank line among the `context_lines` before it. Distractors are eligible lines of other
    documents whose stripped text differs from the target and from each other.

    Args:
        documents: (name, text) pairs, in a fixed order.
        max_examples: at most this many examples, sampled evenly at random (seeded) from all targets.
        seed: seed of the sampling and of the (shuffled) order of the examples.
        context_lines: lines of context shown before the target.
        num_choices: candidates per example, the true line included.
        min_chars: shortest eligible line (stripped).
        max_chars: longest eligible line.

    Returns:
        Dicts with `id` (position in the list), `source` (document name), `line` (1-based), `context`, `choices`,
        `label`, in a seeded shuffled order: any prefix of the list is a random sample of all targets.

    Raises:
        OfflineTaskError: fewer than two documents with eligible lines.
    """
    split_docs = [(name, text.splitlines()) for name, text in documents]

    def eligible(line: str) -> bool:
        return len(line.strip()) >= min_chars and len(line) <= max_chars

    pool = [(d, line) for d, (_, lines) in enumerate(split_docs) for line in lines if eligible(line)]
    targets = [
        (d, i)
        for d, (_, lines) in enumerate(split_docs)
        for i in range(context_lines, len(lines))
        if eligible(lines[i]) and any(line.strip() for line in lines[i - context_lines : i])
    ]
    _check_sources(NEXT_LINE, {d for d, _ in pool}, targets)
    rng = random.Random(seed)
    examples = []
    for d, i in _sample(targets, max_examples, rng):
        name, lines = split_docs[d]
        choices = _with_distractors(lines[i], d, _draws(pool, rng), num_choices)
        if choices is None:
            continue
        rng.shuffle(choices)
        examples.append(
            {
                "id": len(examples),
                "source": name,
                "line": i + 1,
                "context": "\n".join(lines[i - context_lines : i]) + "\n",
                "choices": choices,
                "label": choices.index(lines[i]),
            }
        )
    return examples


def next_span_examples(
    documents: Sequence[Document],
    max_examples: int = DEFAULT_MAX_EXAMPLES,
    seed: int = 0,
    context_words: int = 48,
    span_words: int = 8,
    num_choices: int = 4,
) -> list[dict[str, Any]]:
    """Examples for `litprune_next_span`.

    Documents are split into whitespace-delimited words (each keeps its trailing whitespace). Targets start
    every `span_words + context_words // 2` words once `context_words` words of context are available; the
    target is the next `span_words` words, trailing whitespace removed. Distractors are spans of the same
    number of words from other documents.

    Args:
        documents: (name, text) pairs, in a fixed order.
        max_examples: at most this many examples, sampled evenly at random (seeded) from all targets.
        seed: seed of the sampling and of the (shuffled) order of the examples.
        context_words: words of context shown.
        span_words: words per candidate span.
        num_choices: candidates per example, the true span included.

    Returns:
        Dicts with `id` (position in the list), `source`, `word` (0-based index of the span's first word), `context`,
        `choices`, `label`, in a seeded shuffled order: any prefix of the list is a random sample of all targets.

    Raises:
        OfflineTaskError: fewer than two documents long enough for a span.
    """
    words = [(name, re.findall(r"\S+\s*", text)) for name, text in documents]
    stride = span_words + context_words // 2
    targets = [
        (d, p) for d, (_, ws) in enumerate(words) for p in range(context_words, len(ws) - span_words + 1, stride)
    ]
    starts = [(d, q) for d, (_, ws) in enumerate(words) for q in range(0, len(ws) - span_words + 1, span_words)]
    _check_sources(NEXT_SPAN, {d for d, _ in starts}, targets)
    rng = random.Random(seed)

    def span(d: int, start: int) -> str:
        return "".join(words[d][1][start : start + span_words]).rstrip()

    examples = []
    for d, p in _sample(targets, max_examples, rng):
        true = span(d, p)
        choices = _with_distractors(true, d, ((od, span(od, q)) for od, q in _draws(starts, rng)), num_choices)
        if choices is None:
            continue
        rng.shuffle(choices)
        examples.append(
            {
                "id": len(examples),
                "source": words[d][0],
                "word": p,
                "context": "".join(words[d][1][p - context_words : p]),
                "choices": choices,
                "label": choices.index(true),
            }
        )
    return examples


GENERATORS: dict[str, Callable[..., list[dict[str, Any]]]] = {
    NEXT_LINE: next_line_examples,
    NEXT_SPAN: next_span_examples,
}
_TEMPLATES = {NEXT_LINE: "next_line.yaml", NEXT_SPAN: "next_span.yaml"}


def prepare_offline_task(
    name: str,
    documents: Sequence[Document] | None = None,
    max_examples: int = DEFAULT_MAX_EXAMPLES,
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> OfflineTask:
    """Generate (or reuse from the cache) an offline task's data and its lm-eval YAML.

    Args:
        name: `litprune_next_line` or `litprune_next_span`.
        documents: (name, text) pairs; None uses the held-out `test` split of the embedded corpus.
        max_examples: cap on the number of examples.
        seed: seed of example sampling and of the order of the examples in the data file (lm-eval's `limit` keeps
            the first ones, so the seed picks which examples a limited run sees).
        cache_dir: parent directory of the generated tasks; default `cache_root()/eval_tasks`.

    Returns:
        The task on disk, named after its variant (see the module docstring). The same inputs always return the
        same directory and bytes.

    Raises:
        OfflineTaskError: unknown task name, or documents that cannot make the task.
    """
    if name not in GENERATORS:
        raise OfflineTaskError(f"Unknown offline task {name!r}; offline tasks are {sorted(GENERATORS)}.")
    if not isinstance(max_examples, int) or max_examples < 1:
        raise OfflineTaskError(f"max_examples={max_examples!r} must be a positive integer.")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise OfflineTaskError(f"seed={seed!r} must be a non-negative integer.")
    docs = list(documents) if documents is not None else embedded_documents()
    params = {"max_examples": max_examples, "seed": seed}
    fingerprint = _fingerprint(name, params, docs)
    corpus = corpus_fingerprint(docs)
    variant = variant_name(name, corpus, max_examples, seed)
    root = Path(cache_dir) if cache_dir is not None else _cache_root() / "eval_tasks"
    final = root / f"corpus-{corpus[:16]}" / variant
    if not (final / f"{variant}.yaml").is_file():
        examples = GENERATORS[name](docs, max_examples=max_examples, seed=seed)
        if not examples:
            raise OfflineTaskError(
                f"Task {name}: no example could be given three distinct distractors from other documents; pass more "
                "(or more varied) documents."
            )
        extra = {"generator_version": GENERATOR_VERSION, "documents": len(docs), "corpus_sha256": corpus}
        _publish(final, name, variant, examples, {**params, **extra})
    manifest = json.loads((final / "manifest.json").read_text(encoding="utf-8"))
    return OfflineTask(
        name=variant,
        base_name=name,
        yaml_path=final / f"{variant}.yaml",
        data_path=final / "data.jsonl",
        num_examples=manifest["num_examples"],
        fingerprint=fingerprint,
        num_documents=len(docs),
        corpus_fingerprint=corpus,
        seed=seed,
    )


def variant_name(name: str, corpus: str, max_examples: int, seed: int) -> str:
    """The lm-eval task name of one variant: `<name>_<corpus[:8]>_n<max_examples>_s<seed>_g<generator version>`."""
    return f"{name}_{corpus[:8]}_n{max_examples}_s{seed}_g{GENERATOR_VERSION}"


def corpus_fingerprint(documents: Sequence[Document]) -> str:
    """sha256 hex digest of the documents (names and texts, in order), independent of any task parameter."""
    digest = hashlib.sha256(b"litprune-offline-corpus")
    _update_with_documents(digest, documents)
    return digest.hexdigest()


def _publish(final: Path, name: str, variant: str, examples: list[dict[str, Any]], params: dict[str, Any]) -> None:
    from litprune.utils.atomic import atomic_dir

    data = "".join(json.dumps(example, ensure_ascii=False, sort_keys=True) + "\n" for example in examples)
    data_sha = hashlib.sha256(data.encode("utf-8")).hexdigest()
    template = resources.files("litprune.eval").joinpath("task_templates").joinpath(_TEMPLATES[name]).read_text("utf-8")
    with atomic_dir(final) as tmp:
        (tmp / "data.jsonl").write_text(data, encoding="utf-8")
        # The YAML must name the data where it will live after the rename, not the temporary directory.
        yaml_text = template.replace("__DATA_FILE__", json.dumps(str((final / "data.jsonl").resolve())))
        yaml_text = yaml_text.replace("__TASK_NAME__", variant).replace("__DATA_SHA256__", data_sha)
        (tmp / f"{variant}.yaml").write_text(yaml_text, encoding="utf-8")
        manifest = {"task": variant, "base_task": name, "num_examples": len(examples), "data_sha256": data_sha}
        manifest.update(params)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")


def _fingerprint(name: str, params: dict[str, Any], documents: Sequence[Document]) -> str:
    digest = hashlib.sha256(json.dumps([name, GENERATOR_VERSION, params], sort_keys=True).encode("utf-8"))
    _update_with_documents(digest, documents)
    return digest.hexdigest()


def _update_with_documents(digest: Any, documents: Sequence[Document]) -> None:
    for doc_name, text in documents:
        for part in (doc_name.encode("utf-8"), text.encode("utf-8")):
            # Length prefixes keep the stream unambiguous: no boundary between name and text can shift.
            digest.update(len(part).to_bytes(8, "little") + part)


def _cache_root() -> Path:
    from litprune.data.cache import cache_root

    return cache_root()


def _check_sources(name: str, sources: set[int], targets: list[tuple[int, int]]) -> None:
    if len(sources) < 2 or not targets:
        raise OfflineTaskError(
            f"Task {name} needs at least two documents with usable text (distractors come from other documents); "
            f"got {len(sources)} usable document(s) and {len(targets)} possible example(s). Pass more documents."
        )


def _sample(targets: list[tuple[int, int]], max_examples: int, rng: random.Random) -> list[tuple[int, int]]:
    # A seeded sample in random order (a shuffle of all targets when there are few): the examples are written in this
    # order, so the first `limit` of them that lm-eval keeps are spread over every document.
    return rng.sample(targets, min(max_examples, len(targets)))


def _draws(pool: list[Any], rng: random.Random, limit: int = 4 * _MAX_DRAWS_PER_DISTRACTOR) -> Iterator[Any]:
    # A generator, so only as many random numbers are consumed as distractors are actually needed.
    for _ in range(limit):
        yield pool[rng.randrange(len(pool))]


def _with_distractors(true: str, doc: int, draws: Iterator[tuple[int, str]], num_choices: int) -> list[str] | None:
    """The true candidate plus `num_choices - 1` distinct candidates from other documents, or None."""
    choices, seen = [true], {true.strip()}
    for other_doc, candidate in draws:
        if other_doc == doc or candidate.strip() in seen or not candidate.strip():
            continue
        seen.add(candidate.strip())
        choices.append(candidate)
        if len(choices) == num_choices:
            return choices
    return None
