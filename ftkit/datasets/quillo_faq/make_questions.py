"""Write questions.jsonl: questions about faq.md, each with its answer, the fact the answer
must state and the FAQ entry that holds it. Standard library only; run it to regenerate:

    python ftkit/datasets/quillo_faq/make_questions.py
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (FAQ entry, question, answer, the fact the answer must state)
QUESTIONS = [
    (
        "Quillo Drive plans",
        "How much storage does the free Drive plan give me?",
        "Quillo Drive Free includes 5 GB of storage.",
        "5 GB",
    ),
    (
        "Quillo Drive plans",
        "What does Drive Plus cost per month?",
        "Quillo Drive Plus costs $4.99 a month.",
        "$4.99",
    ),
    (
        "Quillo Drive plans",
        "What's the yearly price of Drive Plus?",
        "Quillo Drive Plus costs $49.99 a year.",
        "$49.99",
    ),
    (
        "Largest file in Drive",
        "What's the biggest single file I can upload to Drive?",
        "A single file in Quillo Drive can be at most 10 GB.",
        "10 GB",
    ),
    (
        "Deleted files",
        "How long do deleted files stay in the Drive trash?",
        "Deleted files stay in the trash for 30 days.",
        "30 days",
    ),
    (
        "Version history",
        "For how long does Drive keep older versions of my files?",
        "Quillo Drive keeps earlier versions for 90 days.",
        "90 days",
    ),
    (
        "Mail attachments",
        "What's the maximum attachment size in Quillo Mail?",
        "Attachments can be up to 25 MB in total.",
        "25 MB",
    ),
    (
        "Mail storage",
        "How much mailbox space comes with Quillo Mail?",
        "Every Quillo Mail account includes 15 GB.",
        "15 GB",
    ),
    (
        "Calendar guests",
        "How many people can I invite to a single calendar event?",
        "A Quillo Calendar event can have at most 200 guests.",
        "200",
    ),
    (
        "Calendar reminders",
        "How many reminders can one calendar event have?",
        "Quillo Calendar can send up to 5 reminders for each event.",
        "5",
    ),
    (
        "Chat history on the free plan",
        "How far back does free Chat keep my messages?",
        "On the free plan, Quillo Chat keeps 1 year of history.",
        "1 year",
    ),
    (
        "Chat group size",
        "What's the member limit for a Chat group?",
        "A Quillo Chat group can hold up to 500 members.",
        "500",
    ),
    (
        "Tasks per project",
        "Is there a limit on tasks in one Tasks project?",
        "Yes: a project can hold up to 1,000 tasks.",
        "1,000",
    ),
    (
        "Notes export",
        "Which formats can Quillo Notes export to?",
        "Quillo Notes exports notebooks as PDF or Markdown.",
        "Markdown",
    ),
    (
        "Notes devices",
        "On how many devices does free Notes sync?",
        "The free plan of Quillo Notes syncs across up to 3 devices.",
        "3",
    ),
    (
        "Family plan",
        "What is the price of the Family plan?",
        "The Quillo Family plan costs $9.99 a month.",
        "$9.99",
    ),
    (
        "Family plan",
        "How many people can share a Family plan?",
        "The Family plan covers up to 6 people.",
        "6",
    ),
    (
        "Refunds",
        "Within how many days can I get a refund?",
        "Quillo refunds any paid plan in full within 14 days.",
        "14 days",
    ),
    (
        "Support hours",
        "When is chat support available?",
        "Support answers Monday to Friday, 8:00 to 18:00 CET.",
        "18:00",
    ),
    (
        "Two-step verification",
        "What can I use for two-step verification?",
        "An authenticator app or SMS codes.",
        "SMS",
    ),
    ("Password rules", "How long does my password have to be?", "At least 12 characters.", "12"),
    (
        "Account deletion",
        "How long after I request deletion is my account deleted?",
        "Your account is deleted after 7 days.",
        "7 days",
    ),
    (
        "Data export",
        "How long does a full data export take to arrive?",
        "The ZIP file arrives within 48 hours.",
        "48 hours",
    ),
    (
        "Student discount",
        "Is there a discount for students?",
        "Yes: students get 50% off Plus plans.",
        "50%",
    ),
    (
        "API limits",
        "What's the rate limit of the Quillo API?",
        "600 requests a minute for each account.",
        "600",
    ),
    (
        "Business plan",
        "How much does Quillo Business cost per user?",
        "Quillo Business costs $8 per user a month.",
        "$8",
    ),
]


def main() -> None:
    rows = []
    for number, (entry, question, answer, fact) in enumerate(QUESTIONS, 1):
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        rows.append({"id": f"faq-{number:02d}", "messages": messages, "fact": fact, "entry": entry})
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    (HERE / "questions.jsonl").write_text(text, encoding="utf-8")
    print(f"{len(rows)} questions")


if __name__ == "__main__":
    main()
