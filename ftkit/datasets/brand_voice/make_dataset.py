"""Generate the Quillo house-style dataset: terse internal notes -> replies in Quillo's voice.

Standard library only, seeded, byte-for-byte reproducible::

    python ftkit/datasets/brand_voice/make_dataset.py [--out DIR]

A case is drawn first (a kind of problem, the customer, the app, what the agent did and its
details); the note is that case written the way agents write notes, and the reply is that
case written in the house style (README.md). Train and validation notes use note styles A;
test notes use styles B (other layouts, other words for the same problems, lowercase and
typos), so the test asks for the voice, not for memorised notes. Before writing anything
the script checks that no test note is a near-duplicate of a train or validation note
(character 5-gram Jaccard similarity at most 0.5) and that no case repeats across splits.
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
SEED = 2026
SIZES = {"train": 480, "validation": 80, "test": 120}
NGRAM_SIZE = 5
NEAR_DUPLICATE_THRESHOLD = 0.5
MAX_ATTEMPTS = 500  # tries per note to find a case and wording that are new

CUSTOMERS = (
    "Priya", "Tomás", "Aisha", "Jonas", "Mei", "Lucas", "Fatima", "Oliver", "Sofia", "Kwame",
    "Elena", "Hiroshi", "Amara", "Noah", "Ingrid", "Mateo", "Leila", "Sam", "Anya", "Diego",
    "Chloe", "Ravi", "Zanele", "Felix", "Yara", "Ben", "Marta", "Omar", "Hannah", "Kenji",
    "Nadia", "Arjun", "Lotte", "Emeka", "Grace", "Pavel", "Isla", "Malik", "Rosa", "Theo",
    "Selin", "Victor", "Ama", "Jules", "Freya", "Hugo", "Nia", "Carlos", "Eva", "Luca",
)  # fmt: skip
AGENTS = ("Tomasz", "Beatriz", "Ines", "Kofi", "Wen", "Dara", "Marco", "Sunita")
APPS = ("Notes", "Calendar", "Mail", "Drive", "Chat", "Tasks")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")  # fmt: skip
PRICES = ("$4.99", "$7.99", "$9.99", "$12.99", "$49.99", "$99.00")
REFUND_DAYS = ("3–5", "5–7", "5–10")
DEVICES = ("iPhone", "Android phone", "Mac", "Windows PC", "iPad")
STORES = {"iPhone": "App Store", "iPad": "App Store", "Android phone": "Google Play Store",
          "Mac": "Mac App Store", "Windows PC": "Microsoft Store"}  # fmt: skip
VERSIONS = (("4.2.0", "4.2.1"), ("5.0.3", "5.0.4"), ("3.9.1", "3.9.2"), ("6.1.0", "6.1.1"))
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")
FEATURES = {
    "Notes": ("nested folders", "search inside handwriting"),
    "Calendar": ("a second time zone", "week numbers"),
    "Mail": ("scheduled sending", "a dark theme"),
    "Drive": ("links that expire", "offline folders"),
    "Chat": ("read receipts", "message scheduling"),
    "Tasks": ("recurring subtasks", "a board view"),
}
HOW_TO = {  # app -> (what the customer asked to do, where it is, what to choose)
    "Notes": (("pin a note", "the note's … menu", "Pin to top"),
              ("export a notebook as PDF", "File > Export", "PDF")),
    "Calendar": (("share a calendar", "Settings > Calendars", "Share with people"),
                 ("add a second time zone", "Settings > Time zones", "Add time zone")),
    "Mail": (("set up an out-of-office reply", "Settings > Replies", "Automatic reply"),
             ("block a sender", "the message's … menu", "Block sender")),
    "Drive": (("recover an older version of a file", "the file's … menu", "Version history"),
              ("see how much space is left", "Settings > Storage", "Storage details")),
    "Chat": (("mute a channel", "the channel's bell icon", "Mute for now"),
             ("change the notification sound", "Settings > Notifications", "Sound")),
    "Tasks": (("assign a task to a colleague", "the task's Assignee field", "their name"),
              ("set a due time", "the task's Due date field", "Add time")),
}  # fmt: skip
RESTORE = {"Notes": "notebook", "Calendar": "calendar", "Mail": "folder", "Drive": "folder",
           "Chat": "channel", "Tasks": "project"}  # fmt: skip
KINDS = ("double_charge", "refund", "locked_out", "sync_bug", "feature_request", "how_to",
         "restore", "outage")  # fmt: skip

CLOSING = "If anything else comes up, just reply to this email and we'll pick it up."


# --- cases ----------------------------------------------------------------------------------


def draw_case(rng: random.Random, kind: str) -> Json:
    """One support case: who, which app, what happened, what the agent did, with the details
    the note and the reply spell out (nothing else, so two cases never read the same)."""
    app = rng.choice(APPS)
    case = {"kind": kind, "customer": rng.choice(CUSTOMERS), "agent": rng.choice(AGENTS),
            "app": app}  # fmt: skip
    if kind == "double_charge":
        case |= {"month": rng.choice(MONTHS), "price": rng.choice(PRICES),
                 "days": rng.choice(REFUND_DAYS)}  # fmt: skip
    elif kind == "refund":
        case |= {"plan": rng.choice(("monthly", "annual")), "price": rng.choice(PRICES),
                 "days": rng.choice(REFUND_DAYS)}  # fmt: skip
    elif kind == "locked_out":
        case |= {"fix": rng.choice(("reset_link", "two_step_off"))}
    elif kind == "sync_bug":  # only what the note or the reply says: no case in two guises
        broken, fixed = rng.choice(VERSIONS)
        case |= {"device": rng.choice(DEVICES), "broken": broken}
        if rng.random() < 0.5:
            case |= {"fix": "update", "fixed": fixed}
        else:
            case |= {"fix": "eta", "day": rng.choice(WEEKDAYS)}
    elif kind == "feature_request":
        case |= {"feature": rng.choice(FEATURES[app])}
    elif kind == "how_to":
        case |= dict(zip(("task", "where", "choose"), rng.choice(HOW_TO[app]), strict=True))
    elif kind == "restore":
        case |= {"item": RESTORE[app], "day": rng.choice(WEEKDAYS)}
    else:  # outage
        case |= {"day": rng.choice(WEEKDAYS), "minutes": rng.choice((20, 35, 45, 90))}
    return case


# --- the reply, in the house style ----------------------------------------------------------


def problem_sentence(case: Json) -> str:
    """The thanks and the problem, in the customer's terms, with the app's full name."""
    app, kind = f"Quillo {case['app']}", case["kind"]
    about = {
        "double_charge": f"you were charged twice for {app} in {case.get('month')}",
        "refund": f"you'd like a refund for your {case.get('plan')} {app} plan",
        "locked_out": f"you can't sign in to {app}",
        "sync_bug": f"{app} stopped syncing on your {case.get('device')}",
        "feature_request": f"you'd like {case.get('feature')} in {app}",
        "how_to": f"you'd like to {case.get('task')} in {app}",
        "restore": f"a {case.get('item')} disappeared from {app} on {case.get('day')}",
        "outage": f"{app} wasn't working for you on {case.get('day')}",
    }[kind]
    return f"Thanks for letting us know that {about}."


def action_sentences(case: Json) -> str:
    """What we did, or what to do, with every detail of the note."""
    kind = case["kind"]
    if kind == "double_charge":
        return (f"We've refunded the extra payment of {case['price']}, and it will be back on "
                f"your card within {case['days']} business days.")  # fmt: skip
    if kind == "refund":
        return (f"We've cancelled the plan and refunded {case['price']}, which will reach you "
                f"within {case['days']} business days.")  # fmt: skip
    if kind == "locked_out" and case["fix"] == "reset_link":
        return "We've sent a password reset link to your email; it works for the next 24 hours."
    if kind == "locked_out":
        return ("We've switched off two-step verification so you can sign in, and you can "
                "turn it back on in Settings > Security.")  # fmt: skip
    if kind == "sync_bug" and case["fix"] == "update":
        return (
            f"Version {case['broken']} has a bug that stops syncing, and version "
            f"{case['fixed']} fixes it: please update from the {STORES[case['device']]}."
        )
    if kind == "sync_bug":
        return (f"Our engineers have found the cause, and we expect a fix by {case['day']}; "
                "we'll write to you as soon as it's out.")  # fmt: skip
    if kind == "feature_request":
        return ("We've passed your idea on to the product team. We can't promise a date, but "
                "requests like yours shape what we build next.")  # fmt: skip
    if kind == "how_to":
        return f"Open {case['where']} and choose {case['choose']}: that's all it takes."
    if kind == "restore":
        return (f"We've restored the {case['item']} from our backups, so you'll find it where "
                "it was, with everything in it.")  # fmt: skip
    return (f"It was a wider outage that lasted {case['minutes']} minutes, and everything has "
            "worked normally since. We're sorry for the disruption.")  # fmt: skip


def reply(case: Json) -> str:
    """The reply in Quillo's house style (README.md): greeting, problem, action, closing,
    sign-off with the agent's name."""
    return (f"Hi {case['customer']},\n\n{problem_sentence(case)} {action_sentences(case)}\n\n"
            f"{CLOSING}\n\nWarm regards,\n{case['agent']} at Quillo Support")  # fmt: skip


# --- the note, the way agents write them ------------------------------------------------------


def _shorthand(case: Json) -> dict[str, tuple[str, str, str, str]]:
    """Per kind: (problem in style A, in style B, what was done in style A, in style B)."""
    get = {key: str(value) for key, value in case.items()}.get
    month, price = get("month", "")[:3], get("price", "")
    days, day = get("days", "").replace("–", "-"), get("day", "")
    update = case.get("fix") == "update"
    return {
        "double_charge": (f"double charge {month}", f"billed 2x {month.lower()}",
                          f"refunded {price}, {days}d", f"reversed one, {price}, {days} biz days"),
        "refund": (f"refund req ({get('plan')})", f"wants money back, {get('plan')} plan",
                   f"cancelled, refunded {price}, {days}d",
                   f"plan cancelled + {price} back, {days} biz days"),
        "locked_out": ("locked out", "cant log in",
                       "sent reset link" if get("fix") == "reset_link" else "2fa disabled",
                       "emailed reset link" if get("fix") == "reset_link" else "turned 2FA off"),
        "sync_bug": (f"sync broken, {get('device')}, {get('broken')}",
                     f"no sync on {get('device')} v{get('broken')}",
                     f"fix = update to {get('fixed')}" if update else f"fix ETA {day[:3]}",
                     f"fixed in {get('fixed')}, told them to update" if update
                     else f"eng says fix by {day}"),
        "feature_request": (f"FR: {get('feature')}", f"asks for {get('feature')}",
                            "passed to PM", "logged for product"),
        "how_to": (f"how to {get('task')}?", f"q: how to {get('task')}",
                   f"{get('where')} -> {get('choose')}",
                   f"pointed to {get('where')} / {get('choose')}"),
        "restore": (f"deleted {get('item')} {day[:3]}", f"lost {get('item')} ({day})",
                    "restored from backup", "brought it back from backup"),
        "outage": (f"outage {day[:3]}", f"down for them {day}",
                   f"global outage {get('minutes')}m, resolved",
                   f"was the {get('minutes')}min outage, all fine now"),
    }  # fmt: skip


def _words(case: Json, family: str) -> tuple[str, str]:
    """(the problem, what was done) in an agent's shorthand; family B uses other words."""
    problem_a, problem_b, done_a, done_b = _shorthand(case)[case["kind"]]
    return (problem_b, done_b) if family == "B" else (problem_a, done_a)


NOTE_STYLES = {  # family -> layouts: customer, app, problem, done, agent
    "A": (
        "cust: {customer} | app: {app} | issue: {problem} | did: {done} | by: {agent}",
        "{customer} / {app} / {problem} -> {done}. -{agent}",
        "[{app}] {customer}: {problem}. {done}. {agent}",
    ),
    "B": (
        "{agent} here. {customer} (Quillo {app}) {problem}; {done}.",
        "re {customer}, {app_lower} app - {problem} => {done} ({agent})",
        "note from {agent}: {problem} for {customer} in {app}. done: {done}",
    ),
}


def note(rng: random.Random, case: Json, family: str) -> str:
    """The case as one line of an agent's note, in one of the family's layouts."""
    problem, done = _words(case, family)
    text = rng.choice(NOTE_STYLES[family]).format(
        customer=case["customer"], app=case["app"], app_lower=case["app"].lower(),
        problem=problem, done=done, agent=case["agent"],
    )  # fmt: skip
    if family == "B" and rng.random() < 0.3:
        text = text.lower().replace(case["customer"].lower(), case["customer"])  # names kept
    if family == "B" and rng.random() < 0.3:
        text = _typo(rng, text, {case["customer"], case["agent"]})
    return text


def _typo(rng: random.Random, text: str, protected: set[str]) -> str:
    """Swap two letters in one longer word that is not a name, a number or a path."""
    words = text.split(" ")
    choices = [i for i, w in enumerate(words)
               if len(w) > 4 and w.isalpha() and w not in protected]  # fmt: skip
    if not choices:
        return text
    i = rng.choice(choices)
    word, at = words[i], rng.randrange(1, len(words[i]) - 2)
    words[i] = word[:at] + word[at + 1] + word[at] + word[at + 2 :]
    return " ".join(words)


# --- splits and checks ---------------------------------------------------------------------


def char_ngrams(text: str, n: int = NGRAM_SIZE) -> set[str]:
    """The set of character n-grams of a lower-cased, whitespace-collapsed text."""
    text = re.sub(r"\s+", " ", text.lower()).strip()
    return {text[i : i + n] for i in range(max(1, len(text) - n + 1))}


def jaccard(a: set[str], b: set[str]) -> float:
    """Size of the intersection over size of the union (1.0 for two empty sets)."""
    shared = len(a & b)
    union = len(a) + len(b) - shared
    return shared / union if union else 1.0


def case_key(case: Json) -> str:
    """What makes two cases the same case (the agent writing it does not)."""
    return json.dumps({k: v for k, v in case.items() if k != "agent"}, sort_keys=True)


def make_split(rng: random.Random, name: str, size: int, family: str, taken: set[str],
               avoid: list[set[str]]) -> list[Json]:  # fmt: skip
    """`size` records, kinds in equal turns, every case new; test notes far from `avoid`."""
    records = []
    for number in range(1, size + 1):
        kind = KINDS[(number - 1) % len(KINDS)]
        for _ in range(MAX_ATTEMPTS):
            case = draw_case(rng, kind)
            text = note(rng, case, family)
            grams = char_ngrams(text)
            new = case_key(case) not in taken
            far = all(jaccard(grams, other) <= NEAR_DUPLICATE_THRESHOLD for other in avoid)
            if new and far:
                break
        else:
            raise RuntimeError(f"{name}: no new case of kind {kind} after {MAX_ATTEMPTS} tries")
        taken.add(case_key(case))
        messages = [{"role": "user", "content": text},
                    {"role": "assistant", "content": reply(case)}]  # fmt: skip
        records.append({"id": f"{name}-{number:04d}", "messages": messages, "kind": kind,
                        "app": case["app"].lower(), "note_style": family})  # fmt: skip
    return records


def make_dataset() -> dict[str, list[Json]]:
    """The three splits, seeded: train and validation in note styles A, test in B."""
    rng = random.Random(SEED)
    taken: set[str] = set()
    train = make_split(rng, "train", SIZES["train"], "A", taken, [])
    validation = make_split(rng, "validation", SIZES["validation"], "A", taken, [])
    seen = [char_ngrams(r["messages"][0]["content"]) for r in train + validation]
    test = make_split(rng, "test", SIZES["test"], "B", taken, seen)
    return {"train": train, "validation": validation, "test": test}


def write(splits: dict[str, list[Json]], out: Path) -> None:
    """One JSONL file per split (UTF-8, one record per line, keys in a fixed order)."""
    out.mkdir(parents=True, exist_ok=True)
    for name, records in splits.items():
        lines = [json.dumps(record, ensure_ascii=False) for record in records]
        (out / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="where to write the splits")
    args = parser.parse_args(argv)
    splits = make_dataset()
    write(splits, args.out)
    print(", ".join(f"{name}: {len(records)}" for name, records in splits.items()))


if __name__ == "__main__":
    main()
