"""Generate the Quillo support-ticket triage dataset: train, validation and test JSONL files.

Standard library only, seeded, byte-for-byte reproducible::

    python ftkit/datasets/support_tickets/make_dataset.py [--out DIR]

Each ticket is rendered from a phrase family: a template for the issue itself plus optional
openers, context, a second minor issue, tone, closers and sign-offs. Train and validation come
from family A (phrases_train.json). The test split mixes family B (phrases_test.json: other
wording, typos, casing, tone, terse tickets) with hand-written tickets
(handwritten_test.jsonl). Both families share the issue kinds and the label rules
(issues.json, labels.json), so a model that learned the task rather than the templates can
pass the test. Before writing anything the script checks that no test ticket is a
near-duplicate of a train or validation ticket (character 5-gram Jaccard similarity, see
README.md).
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path
from typing import Any

Json = dict[str, Any]

HERE = Path(__file__).resolve().parent
SEED = 135
SPLIT_SIZES = {"train": 640, "validation": 120}
TEST_SIZE = 160  # family-B tickets fill what the hand-written ones leave
NGRAM_SIZE = 5
NEAR_DUPLICATE_THRESHOLD = 0.5
MAX_TICKET_WORDS = 70
MAX_ATTEMPTS = 200  # tries per ticket to find a text that is new and of the right length
LABEL_KEYS = ("category", "priority", "product", "summary")
PUNCTUATION = re.compile(r"[.,!?;:]")


# --- reading the source files ---------------------------------------------------------


def load_json(name: str) -> Any:
    """Read one of the JSON files that sit next to this script."""
    return json.loads((HERE / name).read_text(encoding="utf-8"))


def check_labels(labels: dict[str, str], allowed: Json, where: str) -> None:
    """Raise ValueError, naming `where`, if a label is not allowed or the summary is too long."""
    for field in ("category", "priority", "product"):
        if labels.get(field) not in allowed[field]:
            raise ValueError(
                f"{where}: {field}={labels.get(field)!r} is not one of {allowed[field]}"
            )
    if not 0 < len(labels.get("summary", "").split()) <= allowed["summary_max_words"]:
        raise ValueError(f"{where}: summary must have 1 to {allowed['summary_max_words']} words")


def parse_handwritten(line: str, allowed: Json, where: str) -> Json:
    """One line of handwritten_test.jsonl as a ticket; errors name the file and line."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: not a JSON object ({error})") from error
    missing = {"id", "ticket", "traits", *LABEL_KEYS} - set(row)
    if missing:
        raise ValueError(f"{where}: missing keys {sorted(missing)}")
    check_labels(row, allowed, where)
    labels = {key: row[key] for key in LABEL_KEYS}
    return {"id": row["id"], "text": row["ticket"], "labels": labels, "traits": row["traits"]}


def load_handwritten(allowed: Json) -> list[Json]:
    """The hand-written test tickets, checked, in the shape of generated tickets."""
    path = HERE / "handwritten_test.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    return [parse_handwritten(line, allowed, f"{path.name}:{n}") for n, line in enumerate(lines, 1)]


# --- rendering one ticket --------------------------------------------------------------


def pick_slots(rng: random.Random, family: Json, product: str) -> dict[str, str]:
    """Choose the words that fill a template's {slots} for one ticket about `product`."""
    vocab = family["products"][product]
    device, device_short = rng.choice(family["devices"])
    feature, side_feature = rng.sample(vocab["features"], 2)
    howto, side_howto = rng.sample(vocab["howtos"], 2)
    return {
        "app": rng.choice(vocab["names"]),
        "thing": rng.choice(vocab["things"]),
        "device": device,
        "dev": device_short,
        "feature": feature,
        "side_feature": side_feature,
        "howto": howto,
        "side_howto": side_howto,
    }


def render(template: str, slots: dict[str, str]) -> str:
    """Fill a template; a sentence that opens with a slot gets a capital letter."""
    text = template.format(**slots)
    return text[0].upper() + text[1:] if template.startswith("{") else text


def summary_for(template: str, product: str, slots: dict[str, str]) -> str:
    """The reference summary of a generated ticket, in the dataset's one summary style."""
    thing = slots["thing"][0].upper() + slots["thing"][1:]
    return template.format(A=product.capitalize(), Thing=thing, **slots)


def maybe(rng: random.Random, probability: float, choices: list[str]) -> list[str]:
    """A list with one random choice from `choices` with the given probability, else empty."""
    return [rng.choice(choices)] if choices and rng.random() < probability else []


def body_parts(rng: random.Random, family: Json, core: str, priority: str, slots: dict[str, str]):
    """Context, the core issue and maybe a minor second issue, in reading order, and traits."""
    style, sides, traits = family["style"], family["side_issues"], []
    parts = [core]
    if priority != "low" and rng.random() < style["p_side_issue"]:
        traits.append("two_issues")
        if rng.random() < style["p_side_first"]:
            parts.insert(0, render(rng.choice(sides["before"]), slots))
        else:
            parts.append(render(rng.choice(sides["after"]), slots))
    context = maybe(rng, style["p_context"], family["contexts"])
    return [render(sentence, slots) for sentence in context] + parts, traits


def add_tone(rng: random.Random, family: Json, parts: list[str], priority: str):
    """Anger and shouted urgency; neither changes the label (the situation sets priority)."""
    style = family["style"]
    angry = maybe(rng, style["p_angry"], family["angry"])
    parts, traits = parts + angry, ["angry"] if angry else []
    if priority in ("low", "medium") and rng.random() < style["p_fake_urgency"]:
        traits.append("fake_urgency")
        prefixes, suffixes = family["fake_urgency"]["prefix"], family["fake_urgency"]["suffix"]
        if prefixes and rng.random() < 0.5:
            return [rng.choice(prefixes), *parts], traits
        return [*parts, rng.choice(suffixes)], traits
    return parts, traits


def frame(rng: random.Random, family: Json, body: list[str]) -> str:
    """Wrap the body in an optional opener, closer and sign-off and join it into one text."""
    style = family["style"]
    opener = maybe(rng, style["p_opener"], family["openers"])
    closer = maybe(rng, style["p_closer"], family["closers"])
    signoff = maybe(rng, style["p_signoff"], family["signoffs"])
    edge = "\n" if rng.random() < style["p_newlines"] else " "
    text = " ".join(body + closer)
    if opener:
        text = opener[0] + ("" if opener[0].endswith("\n") else edge) + text
    return text + edge + signoff[0] if signoff else text


def add_typos(rng: random.Random, text: str, protected: set[str]) -> str:
    """Swap two neighbouring letters in up to two longer words that are not product words."""
    words = text.split(" ")
    candidates = [
        i
        for i, word in enumerate(words)
        if word.isalpha() and len(word) >= 5 and word.lower() not in protected
    ]
    for i in rng.sample(candidates, min(2, len(candidates))):
        word, j = words[i], rng.randrange(1, len(words[i]) - 2)
        words[i] = word[:j] + word[j + 1] + word[j] + word[j + 2 :]
    return " ".join(words)


def add_noise(rng: random.Random, family: Json, text: str, slots: dict[str, str]):
    """Typos, lower case and dropped punctuation, each with the family's probability."""
    style, traits = family["style"], []
    if rng.random() < style["p_typos"]:
        protected = set(f"{slots['app']} {slots['thing']}".lower().split())
        text, traits = add_typos(rng, text, protected), [*traits, "typos"]
    if rng.random() < style["p_lowercase"]:
        text, traits = text.lower(), [*traits, "lowercase"]
    if rng.random() < style["p_no_punctuation"]:
        text, traits = PUNCTUATION.sub("", text), [*traits, "no_punctuation"]
    return text, traits


def compose_ticket(
    rng: random.Random, family: Json, template: str, priority: str, slots: dict[str, str]
) -> tuple[str, list[str]]:
    """Render one ticket text around its core template; return it with its traits."""
    core = render(template, slots)
    if rng.random() < family["style"]["p_terse"]:
        text, traits = core, ["terse"]
    else:
        body, traits = body_parts(rng, family, core, priority, slots)
        body, tone = add_tone(rng, family, body, priority)
        text, traits = frame(rng, family, body), traits + tone
    if slots["app"].lower() not in text.lower():
        traits.append("no_app_name")
    text, noise = add_noise(rng, family, text, slots)
    return text, traits + noise


# --- building the splits ---------------------------------------------------------------


def cell_quota(weights: dict[str, int], n: int) -> list[tuple[str, str]]:
    """Spread n examples over (category, priority) cells in proportion to `weights`."""
    total = sum(weights.values())
    exact = {cell: n * weight / total for cell, weight in weights.items()}
    counts = {cell: int(share) for cell, share in exact.items()}
    by_remainder = sorted(exact, key=lambda cell: counts[cell] - exact[cell])
    for cell in by_remainder[: n - sum(counts.values())]:
        counts[cell] += 1
    return [tuple(cell.split("/")) for cell in weights for _ in range(counts[cell])]


def generate_ticket(
    rng: random.Random,
    family: Json,
    issues: Json,
    cell: tuple[str, str],
    product: str,
    seen: set[str],
) -> Json:
    """One new ticket for a (category, priority) cell; `seen` holds the texts already used."""
    kinds = [
        name
        for name, spec in issues["kinds"].items()
        if (spec["category"], spec["priority"]) == cell
    ]
    for _ in range(MAX_ATTEMPTS):
        kind = rng.choice(kinds)
        slots = pick_slots(rng, family, product)
        text, traits = compose_ticket(
            rng, family, rng.choice(family["kinds"][kind]), cell[1], slots
        )
        fits = family["style"]["min_words"] <= len(text.split()) <= MAX_TICKET_WORDS
        if fits and normalize(text) not in seen:
            seen.add(normalize(text))
            summary = summary_for(issues["kinds"][kind]["summary"], product, slots)
            labels = {"category": cell[0], "priority": cell[1], "product": product}
            return {"text": text, "labels": {**labels, "summary": summary}, "traits": traits}
    raise RuntimeError(f"no new ticket for {cell} after {MAX_ATTEMPTS} tries: add templates")


def generate_tickets(
    rng: random.Random, family: Json, issues: Json, products: list[str], n: int, seen: set[str]
) -> list[Json]:
    """n tickets whose (category, priority) cells follow the weights, products in rotation."""
    cells = cell_quota(issues["cell_weights"], n)
    rng.shuffle(cells)
    return [
        generate_ticket(rng, family, issues, cell, products[i % len(products)], seen)
        for i, cell in enumerate(cells)
    ]


def spread_by_cell(tickets: list[Json]) -> list[Json]:
    """Order tickets so that every prefix keeps the label mix (train[:n] for learning curves)."""
    buckets: dict[tuple[str, str], list[Json]] = {}
    for ticket in tickets:
        cell = (ticket["labels"]["category"], ticket["labels"]["priority"])
        buckets.setdefault(cell, []).append(ticket)
    groups = list(buckets.values())
    ranked = sorted(
        ((j + 0.5) / len(group), k, j) for k, group in enumerate(groups) for j in range(len(group))
    )
    return [groups[k][j] for _, k, j in ranked]


def make_example(example_id: str, ticket: Json) -> Json:
    """One JSONL record: the chat messages the model sees, then metadata it never sees."""
    labels = ticket["labels"]
    reply = json.dumps({key: labels[key] for key in LABEL_KEYS}, ensure_ascii=False)
    return {
        "id": example_id,
        "messages": [
            {"role": "user", "content": ticket["text"]},
            {"role": "assistant", "content": reply},
        ],
        "source": "handwritten" if "id" in ticket else "generated",
        **{key: labels[key] for key in ("category", "priority", "product")},
        "traits": sorted(set(ticket["traits"])),
    }


def to_records(split: str, tickets: list[Json]) -> list[Json]:
    """Number the generated tickets of a split (`test-0001`...) and build every record."""
    records, count = [], 0
    for ticket in tickets:
        count += "id" not in ticket
        records.append(make_example(ticket.get("id", f"{split}-{count:04d}"), ticket))
    return records


def build_splits() -> dict[str, list[Json]]:
    """Generate the train, validation and test records in memory, deterministically."""
    allowed, issues = load_json("labels.json"), load_json("issues.json")
    handwritten = load_handwritten(allowed)
    seen = {normalize(ticket["text"]) for ticket in handwritten}
    sizes = {**SPLIT_SIZES, "test": TEST_SIZE - len(handwritten)}
    rngs = {split: random.Random(f"{SEED}:{split}") for split in sizes}
    tickets = {}
    for split, n in sizes.items():
        family = load_json("phrases_test.json" if split == "test" else "phrases_train.json")
        tickets[split] = generate_tickets(rngs[split], family, issues, allowed["product"], n, seen)
    tickets["train"] = spread_by_cell(tickets["train"])
    rngs["validation"].shuffle(tickets["validation"])
    tickets["test"] += handwritten
    rngs["test"].shuffle(tickets["test"])
    return {split: to_records(split, tickets[split]) for split in sizes}


# --- near-duplicates -------------------------------------------------------------------


def normalize(text: str) -> str:
    """Lower case, punctuation to spaces, runs of whitespace to one space."""
    return " ".join(re.sub(r"[^\w]+", " ", text.lower()).split())


def char_ngrams(text: str, n: int = NGRAM_SIZE) -> set[str]:
    """The set of character n-grams of the normalized text."""
    clean = normalize(text)
    return {clean[i : i + n] for i in range(max(1, len(clean) - n + 1))}


def jaccard(a: set[str], b: set[str]) -> float:
    """Size of the intersection over size of the union (1.0 for two empty sets)."""
    shared = len(a & b)
    union = len(a) + len(b) - shared
    return shared / union if union else 1.0


def nearest_similarities(queries: list[str], references: list[str]) -> list[tuple[float, int]]:
    """For each query text: its highest similarity to any reference text, and that index."""
    reference_grams = [char_ngrams(text) for text in references]
    nearest = []
    for query in queries:
        grams = char_ngrams(query)
        scores = [jaccard(grams, other) for other in reference_grams]
        best = max(range(len(scores)), key=scores.__getitem__)
        nearest.append((scores[best], best))
    return nearest


def user_texts(records: list[Json]) -> list[str]:
    """The ticket texts (the user messages) of a list of records."""
    return [record["messages"][0]["content"] for record in records]


def check_near_duplicates(splits: dict[str, list[Json]]) -> float:
    """Raise ValueError if a test ticket near-duplicates a train/validation one; else the max."""
    reference = user_texts(splits["train"] + splits["validation"])
    test = user_texts(splits["test"])
    nearest = nearest_similarities(test, reference)
    worst = max(range(len(test)), key=lambda i: nearest[i][0])
    score, match = nearest[worst]
    if score >= NEAR_DUPLICATE_THRESHOLD:
        raise ValueError(
            f"test ticket {test[worst]!r} near-duplicates {reference[match]!r} "
            f"(similarity {score:.2f} >= {NEAR_DUPLICATE_THRESHOLD}): reword one of them"
        )
    return score


# --- writing ---------------------------------------------------------------------------


def write_jsonl(path: Path, records: list[Json]) -> None:
    """Write one JSON object per line, UTF-8, Unix newlines."""
    lines = [json.dumps(record, ensure_ascii=False) + "\n" for record in records]
    path.write_text("".join(lines), encoding="utf-8", newline="\n")


def main(argv: list[str] | None = None) -> None:
    """Command line: build and check the splits, then write train/validation/test.jsonl."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="output folder (default: here)")
    args = parser.parse_args(argv)
    splits = build_splits()
    score = check_near_duplicates(splits)
    args.out.mkdir(parents=True, exist_ok=True)
    for split, records in splits.items():
        write_jsonl(args.out / f"{split}.jsonl", records)
        print(f"{split}: {len(records)} examples -> {args.out / f'{split}.jsonl'}")
    print(f"highest test-to-train similarity {score:.3f} (threshold {NEAR_DUPLICATE_THRESHOLD})")


if __name__ == "__main__":
    main()
