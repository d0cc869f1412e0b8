"""Prompt lists for the synthetic corpus: read/write, expand the taxonomy, filter, and summarise.

Records are dicts with at least ``prompt``; expanded records follow the paper's layout
``{id, major-class, sub-class, prompt}``. Files are ``.jsonl`` (one JSON object per line) or plain text
(one prompt per line).
"""

import contextlib
import json
import math
import os
import random
import re
import statistics
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from tqdm import tqdm

from ..atomic import atomic_open
from ..validation import MAX_SEED
from .taxonomy import fill_template, llm_instruction, major_class, sub_class_table

Record = Dict[str, Any]
MAJOR_KEY = "major-class"
SUB_KEY = "sub-class"
JSONL_SUFFIXES = (".jsonl", ".json")
DEFAULT_MIN_CHARS = 100
DEFAULT_MAX_CHARS = 500


def is_jsonl(path: str) -> bool:
    return os.fspath(path).lower().endswith(JSONL_SUFFIXES)


_TEXT_FIELDS = ("negative_prompt", "category", MAJOR_KEY, SUB_KEY)


def record_problem(record: Any) -> Optional[str]:
    """Why ``record`` is not a usable prompt record (a JSON object with a non-empty string ``prompt``), else None.

    ``negative_prompt`` and the category fields must be strings and ``seed`` an integer in 0..2**64-1 when present.
    """
    if not isinstance(record, dict):
        return f"expected an object with a non-empty string 'prompt', got {_json_kind(record)}"
    prompt = record.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return f"'prompt' must be a non-empty string, got {_json_kind(prompt)}"
    for name in _TEXT_FIELDS:
        if name in record and not isinstance(record[name], str):
            return f"{name!r} must be a string, got {_json_kind(record[name])}"
    if "seed" in record:
        seed = record["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            hint = " (write it without quotes)" if isinstance(seed, str) else ""
            return f"'seed' must be an integer in 0..2**64-1, got {_json_kind(seed)}{hint}"
    return None


def _json_kind(value: Any) -> str:
    """How a JSON value reads in an error message: ``null``, ``a list``, ``the text '5'``, ``5``."""
    if value is None:
        return "null"
    if isinstance(value, (list, dict)):
        return "a list" if isinstance(value, list) else "an object"
    return f"the text {value!r}" if isinstance(value, str) else json.dumps(value)


def _parse_records(path: str, text: str) -> List[Record]:
    """Records of a ``.jsonl`` file (or a ``.json`` list of objects), each checked by ``record_problem``."""
    items: List[Tuple[str, Any]] = []
    problems = []
    whole = None
    if path.lower().endswith(".json"):
        with contextlib.suppress(json.JSONDecodeError, RecursionError):
            whole = json.loads(text)
        if isinstance(whole, dict):
            raise ValueError(f"{path} holds one JSON object; expected a list of {{\"prompt\": ...}} objects.")
    if isinstance(whole, list):
        items = [(f"item {number}", item) for number, item in enumerate(whole, start=1)]
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                items.append((f"line {number}", json.loads(line)))
            except (json.JSONDecodeError, RecursionError) as error:
                problems.append(f"line {number}: not valid JSON ({getattr(error, 'msg', 'nested too deeply')})")
    records = []
    for where, item in items:
        problem = record_problem(item)
        if problem:
            problems.append(f"{where}: {problem}")
        else:
            records.append(item)
    if problems:
        shown = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise ValueError(f"{path} has {len(problems)} malformed record(s): {shown}. Fix or remove them.")
    return records


def read_prompts(path: str) -> List[Record]:
    """Records from a ``.jsonl`` file (objects with a string ``prompt``), a ``.json`` list of such objects, or a
    text file (one prompt per line); malformed records are named with their line number."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Prompt file not found: {path}")
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text (byte {error.start}); save it as UTF-8.") from None
    if is_jsonl(path):
        records = _parse_records(path, text)
    else:
        records = [{"prompt": line.strip()} for line in text.splitlines() if line.strip()]
    if not records:
        raise ValueError(
            f"{path} contains no prompts; write one prompt per line (.txt) or one "
            '{"prompt": "..."} object per line (.jsonl).'
        )
    return records


def write_prompts(records: Sequence[Record], path: str) -> None:
    """Write records atomically: full JSON objects for ``.jsonl``/``.json``, bare prompts otherwise."""
    with atomic_open(path) as file:
        for record in records:
            line = json.dumps(record, ensure_ascii=False) if is_jsonl(path) else record["prompt"]
            file.write(line + "\n")


def record_category(record: Record) -> Optional[str]:
    """A record's category label: its ``category`` field, else ``major-class/sub-class`` when present."""
    if record.get("category"):
        return str(record["category"])
    if record.get(MAJOR_KEY) and record.get(SUB_KEY):
        return f"{record[MAJOR_KEY]}/{record[SUB_KEY]}"
    return None


# --- expand ---------------------------------------------------------------------------------------------------


def expand_from_templates(per_sub_class: int, seed: int = 0, max_attempts: int = 50) -> List[Record]:
    """``per_sub_class`` distinct template prompts for each of the 17 sub-classes, deterministic in ``seed``."""
    if per_sub_class < 1:
        raise ValueError(f"per_sub_class must be at least 1, got {per_sub_class}")
    rng = random.Random(seed)
    records: List[Record] = []
    for major_name, sub_class, categories in sub_class_table():
        major = major_class(major_name)
        seen = set()
        for attempt in range(per_sub_class * max_attempts):
            if len(seen) == per_sub_class:
                break
            prompt = fill_template(major, categories[attempt % len(categories)], rng)
            if prompt not in seen:
                seen.add(prompt)
                records.append({"id": len(records), MAJOR_KEY: major_name, SUB_KEY: sub_class, "prompt": prompt})
    return records


_THINK_BLOCK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL)
_LABEL_PREFIX = re.compile(r"^\s*(?:[-*•]|\d+[.)]|prompt\s*:)\s*", re.IGNORECASE)


def clean_generated(text: str) -> str:
    """The prompt in an LLM reply: no thinking block, label or list marker, wrapping quotes or line breaks."""
    text = _THINK_BLOCK.sub("", text).strip()
    paragraph = next((part for part in re.split(r"\n\s*\n", text) if part.strip()), "")
    paragraph = _LABEL_PREFIX.sub("", " ".join(paragraph.split()))
    if len(paragraph) >= 2 and paragraph[0] == paragraph[-1] and paragraph[0] in "\"'":
        paragraph = paragraph[1:-1].strip()
    return paragraph


def expand_with_llm(
    model_path: str,
    per_sub_class: int,
    seed: int = 0,
    device: str = "cpu",
    max_new_tokens: int = 160,
    temperature: float = 0.8,
    batch_size: int = 8,
) -> List[Record]:
    """Prompts written by a local ``transformers`` causal LM, one per (sub-class, category) request.

    Categories are cycled so each sub-class gets ``per_sub_class`` requests; empty replies are dropped
    (run ``filter`` afterwards for length, format and duplicates).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if per_sub_class < 1:
        raise ValueError(f"per_sub_class must be at least 1, got {per_sub_class}")
    if not os.path.isdir(model_path):
        raise FileNotFoundError(
            f"LLM directory not found: {model_path}; pass a local transformers causal LM folder "
            "(config.json, weights and tokenizer files)."
        )
    tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_path, local_files_only=True, dtype="auto").to(device).eval()

    jobs = []
    for major_name, sub_class, categories in sub_class_table():
        for index in range(per_sub_class):
            jobs.append((major_class(major_name), sub_class, categories[index % len(categories)]))

    torch.manual_seed(seed)
    records: List[Record] = []
    with tqdm(total=len(jobs), desc="Writing prompts", unit="prompt") as progress:
        for start in range(0, len(jobs), batch_size):
            batch = jobs[start : start + batch_size]
            texts = [_chat_text(tokenizer, llm_instruction(*job)) for job in batch]
            inputs = tokenizer(texts, return_tensors="pt", padding=True).to(device)
            with torch.no_grad():
                output = model.generate(
                    **inputs,
                    do_sample=True,
                    temperature=temperature,
                    top_p=0.95,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=tokenizer.pad_token_id,
                )
            replies = tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            for (major, sub_class, _), reply in zip(batch, replies, strict=True):
                prompt = clean_generated(reply)
                if prompt:
                    records.append({"id": len(records), MAJOR_KEY: major.name, SUB_KEY: sub_class, "prompt": prompt})
            progress.update(len(batch))
    return records


def _chat_text(tokenizer: Any, instruction: str) -> str:
    """``instruction`` as one user turn in the tokenizer's chat template (thinking off), or as is without one."""
    if not getattr(tokenizer, "chat_template", None):
        return instruction
    messages = [{"role": "user", "content": instruction}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)


# --- filter ---------------------------------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{\w*\}")
_REPEATED_WORD = re.compile(r"\b(\w+)(?:\W+\1\b){2,}", re.IGNORECASE)
_BRACKETS = {")": "(", "]": "[", "}": "{"}


def normalize_prompt(prompt: str) -> str:
    """Key for de-duplication: Unicode-normalized, lower case, punctuation dropped, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", prompt).casefold()
    text = "".join(char if char.isalnum() else " " for char in text)
    return " ".join(text.split())


def format_problem(prompt: str) -> Optional[str]:
    """Why ``prompt`` is malformed (control characters, unbalanced quotes/brackets, placeholders, ...), or None."""
    if any(unicodedata.category(char) == "Cc" for char in prompt):
        return "control characters"
    if _LABEL_PREFIX.match(prompt):
        return "list marker or label prefix"
    if _PLACEHOLDER.search(prompt):
        return "unfilled template placeholder"
    if prompt.count('"') % 2:
        return "unbalanced quotes"
    stack: List[str] = []
    for char in prompt:
        if char in "([{":
            stack.append(char)
        elif char in _BRACKETS and (not stack or stack.pop() != _BRACKETS[char]):
            return "unbalanced brackets"
    if stack:
        return "unbalanced brackets"
    if _REPEATED_WORD.search(prompt):
        return "repeated words"
    if sum(char.isalpha() for char in prompt) < len(prompt) / 2:
        return "mostly non-letters"
    return None


@dataclass
class FilterResult:
    kept: List[Record]
    rejected: Counter = field(default_factory=Counter)  # reason -> count


def filter_prompts(
    records: Sequence[Record], min_chars: int = DEFAULT_MIN_CHARS, max_chars: int = DEFAULT_MAX_CHARS
) -> FilterResult:
    """Keep well-formed prompts of ``min_chars``..``max_chars`` characters, first occurrence of each duplicate.

    Whitespace in kept prompts is collapsed; other fields are kept as they are.
    """
    if not 0 <= min_chars <= max_chars:
        raise ValueError(f"need 0 <= min_chars <= max_chars, got {min_chars} and {max_chars}")
    result = FilterResult(kept=[])
    seen = set()
    for record in records:
        problem = format_problem(str(record["prompt"]).strip())
        prompt = " ".join(str(record["prompt"]).split())
        if problem is None and not min_chars <= len(prompt) <= max_chars:
            problem = f"length outside {min_chars}-{max_chars} characters"
        if problem is None and normalize_prompt(prompt) in seen:
            problem = "duplicate"
        if problem is not None:
            result.rejected[problem] += 1
            continue
        seen.add(normalize_prompt(prompt))
        result.kept.append({**record, "prompt": prompt})
    return result


# --- stats ----------------------------------------------------------------------------------------------------


def prompt_stats(records: Sequence[Record]) -> Dict[str, Any]:
    """Counts per major class, per category, and prompt-length statistics (characters)."""
    lengths = [len(record["prompt"]) for record in records]
    return {
        "prompts": len(records),
        "major_classes": dict(Counter(record.get(MAJOR_KEY, "(none)") for record in records).most_common()),
        "categories": dict(Counter(record_category(record) or "(none)" for record in records).most_common()),
        "length": {
            "min": min(lengths, default=0),
            "max": max(lengths, default=0),
            "mean": round(statistics.fmean(lengths), 1) if lengths else 0.0,
            "median": statistics.median(lengths) if lengths else 0,
        },
    }


def length_histogram(lengths: Sequence[int], bins: int = 20) -> List[tuple]:
    """``[(low, high, count), ...]`` over ``bins`` equal-width bins covering all lengths."""
    if not lengths:
        raise ValueError("no prompts to draw a length histogram of")
    low, high = min(lengths), max(lengths)
    width = max(1, math.ceil((high - low + 1) / bins))
    counts = Counter((length - low) // width for length in lengths)
    return [(low + i * width, low + (i + 1) * width - 1, counts.get(i, 0)) for i in range(bins)]


def draw_length_histogram(lengths: Sequence[int], path: str, bins: int = 20) -> None:
    """Write a bar chart of prompt lengths to the PNG ``path`` (atomically)."""
    from PIL import Image, ImageDraw, ImageFont

    histogram = length_histogram(lengths, bins)
    width, height, margin = 720, 420, 60
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    plot_w, plot_h = width - 2 * margin, height - 2 * margin
    top = max(count for _, _, count in histogram)
    bar_w = plot_w / len(histogram)
    for i, (low, _, count) in enumerate(histogram):
        x0 = margin + i * bar_w
        y0 = height - margin - plot_h * count / top
        draw.rectangle([x0 + 1, y0, x0 + bar_w - 1, height - margin], fill=(70, 110, 180))
        if count:
            draw.text((x0 + 2, y0 - 12), str(count), fill="black", font=font)
        if i % max(1, len(histogram) // 10) == 0:
            draw.text((x0, height - margin + 6), str(low), fill="black", font=font)
    draw.line([margin, height - margin, width - margin, height - margin], fill="black")
    draw.line([margin, margin, margin, height - margin], fill="black")
    draw.text((margin, 20), f"Prompt length (characters), {len(lengths)} prompts", fill="black", font=font)
    draw.text((width // 2 - 40, height - 24), "characters", fill="black", font=font)
    with atomic_open(path, "wb") as file:
        image.save(file, format="PNG")
