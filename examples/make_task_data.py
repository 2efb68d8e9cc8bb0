"""Generate the small bundled classification and NER data sets (deterministic).

    python examples/make_task_data.py

support-tickets/: customer messages labelled billing, shipping, technical or account.
ner-news/: short news sentences tagged in IOB2 with PER, ORG and LOC.
The held-out files use other templates and other names than the training files, so a
model must generalise rather than memorise to score on them.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent

TICKETS = {
    "billing": (
        [
            "I was charged twice for {thing} this month",
            "Why is my invoice higher than {thing}?",
            "Please refund the payment for {thing}",
            "My credit card was billed for {thing} I cancelled",
            "Can I get a receipt for {thing}?",
            "The price of {thing} on my bill is wrong",
        ],
        [
            "Your billing department took money for {thing} two times",
            "I need a copy of the invoice covering {thing}",
            "There is an unexpected fee on {thing}",
        ],
        [
            "the premium plan",
            "my subscription",
            "the annual licence",
            "the upgrade",
            "last order",
            "the family bundle",
            "the extra storage",
            "my membership",
        ],
    ),
    "shipping": (
        [
            "My package with {thing} has not arrived yet",
            "Where is the parcel containing {thing}?",
            "The courier lost {thing}",
            "Tracking for {thing} has not updated in a week",
            "{thing} was delivered to the wrong address",
            "How long does delivery of {thing} take?",
        ],
        [
            "The box with {thing} arrived crushed and late",
            "Can you change the delivery address for {thing}?",
            "Still waiting for {thing} to be shipped",
        ],
        [
            "the headphones",
            "my new chair",
            "the replacement part",
            "the books",
            "the blender",
            "my order of shoes",
            "the monitor",
            "the gift box",
        ],
    ),
    "technical": (
        [
            "The app crashes when I open {thing}",
            "{thing} shows an error code 500",
            "I cannot connect {thing} to wifi",
            "{thing} freezes after the latest update",
            "The screen of {thing} stays black",
            "{thing} keeps rebooting by itself",
        ],
        [
            "After installing the patch, {thing} stopped working",
            "{thing} is very slow and the fan is loud",
            "Bluetooth pairing with {thing} fails",
        ],
        [
            "the settings page",
            "my laptop",
            "the router",
            "the smart speaker",
            "the dashboard",
            "the printer",
            "the tablet",
            "the camera",
        ],
    ),
    "account": (
        [
            "I forgot the password for {thing}",
            "How do I change the email on {thing}?",
            "Please delete {thing} and all my data",
            "I am locked out of {thing}",
            "Two-factor login for {thing} does not send a code",
            "Someone else signed in to {thing}",
        ],
        [
            "I would like to rename the username of {thing}",
            "Can you merge {thing} with my old profile?",
            "Reset the security questions on {thing}",
        ],
        [
            "my account",
            "my profile",
            "the admin login",
            "my user account",
            "the team workspace",
            "my old account",
            "the shared login",
            "my work profile",
        ],
    ),
}

PEOPLE = (
    [
        "Alice Martin",
        "Bob Chen",
        "Carla Gomez",
        "David Okafor",
        "Eva Novak",
        "Farid Haddad",
        "Grace Kim",
        "Hugo Weber",
        "Ines Silva",
        "Jonas Berg",
        "Kofi Mensah",
        "Lena Fischer",
    ],
    ["Maria Rossi", "Nikhil Rao", "Olga Petrova", "Pedro Alves", "Sofia Laine", "Tariq Aziz"],
)
ORGS = (
    [
        "Acme Corp",
        "Globex",
        "Initech",
        "Umbrella Health",
        "Stark Industries",
        "Wayne Foods",
        "Blue River Bank",
        "Nordic Rail",
        "Sunrise Media",
        "Apex Motors",
    ],
    ["Vertex Labs", "Harbor Energy", "Orion Airlines", "Pine Valley Bank", "Redwood Press"],
)
PLACES = (
    [
        "Paris",
        "Berlin",
        "Lagos",
        "Tokyo",
        "Lima",
        "Oslo",
        "Cairo",
        "Toronto",
        "Madrid",
        "Nairobi",
        "Seoul",
        "Vienna",
    ],
    ["Lisbon", "Mumbai", "Helsinki", "Santiago", "Dublin", "Hanoi"],
)
NEWS = (
    [
        "{PER} joined {ORG} in {LOC} last year .",
        "{ORG} opened a new office in {LOC} .",
        "{PER} met the board of {ORG} on Monday .",
        "In {LOC} , {PER} announced a merger with {ORG} .",
        "{PER} left {LOC} to lead {ORG} .",
        "Shares of {ORG} rose after {PER} spoke in {LOC} .",
        "{PER} flew from {LOC} to visit {ORG} .",
        "The mayor of {LOC} praised {ORG} .",
    ],
    [
        "Yesterday {PER} signed a deal between {ORG} and the city of {LOC} .",
        "{ORG} hired {PER} as chief engineer .",
        "Protesters gathered outside {ORG} in {LOC} .",
        "According to {PER} , {LOC} will host the summit .",
    ],
)


def tickets(split: int, rng: random.Random) -> list[dict]:
    rows = []
    for label, (train_t, held_t, things) in TICKETS.items():
        templates = train_t if split == 0 else held_t
        fillers = things[:6] if split == 0 else things[5:]
        for template in templates:
            for thing in rng.sample(fillers, 5 if split == 0 else 3):
                text = template.format(thing=thing)
                rows.append({"text": text[0].upper() + text[1:], "label": label})
    rng.shuffle(rows)
    return rows


def news(split: int, rng: random.Random, count: int) -> list[dict]:
    rows = []
    for _ in range(count):
        template = rng.choice(NEWS[split])
        tokens, tags = [], []
        for word in template.split():
            if word in ("{PER}", "{ORG}", "{LOC}"):
                kind = word[1:-1]
                pool = {"PER": PEOPLE, "ORG": ORGS, "LOC": PLACES}[kind][split]
                for i, part in enumerate(rng.choice(pool).split()):
                    tokens.append(part)
                    tags.append(("B-" if i == 0 else "I-") + kind)
            else:
                tokens.append(word)
                tags.append("O")
        rows.append({"tokens": tokens, "tags": tags})
    return rows


def write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    rng = random.Random(7)
    write(HERE / "support-tickets" / "train.jsonl", tickets(0, rng))
    write(HERE / "support-tickets" / "heldout.jsonl", tickets(1, rng))
    write(HERE / "ner-news" / "train.jsonl", news(0, rng, 160))
    write(HERE / "ner-news" / "heldout.jsonl", news(1, rng, 48))


if __name__ == "__main__":
    main()
