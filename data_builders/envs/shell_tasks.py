"""Task families of the `shell` environment: each builds, from a seeded RNG, a directory of files, an instruction,
the gold (an answer, or the directory state afterwards), and the oracle's plan (thought + command per step, and how
to read the answer from the commands' outputs; never from the gold).

A family is held-in or held-out as a whole (DESIGN.md: split by tool / domain, never by instance). Held-out
families ask for things no held-in family shows: finding the largest file, counting distinct lines, sorting into a
new file, renaming by extension.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Plan = list[tuple[str, str]]  # (thought, command) per step


@dataclass
class Case:
    files: dict[str, str]  # relative path -> text: the task directory at reset
    instruction: str
    gold: dict[str, Any]  # {"answer", "match"} | {"files", "absent"?, "script"?}
    plan: Plan
    extract: Callable[[list[str]], str] | None  # outputs of the plan's commands -> the answer (None: "done")
    conclusion: str  # the oracle's last thought, before `Answer: ...`


@dataclass(frozen=True)
class Family:
    name: str
    split: str  # "held_in" | "held_out"
    kind: str  # "answer" | "state"
    build: Callable[[random.Random], Case]


WORDS = ["amber", "birch", "cedar", "delta", "ember", "fjord", "grove", "harbor", "island", "juniper", "kestrel",
         "lagoon", "meadow", "nebula", "orchid", "prairie", "quartz", "raven", "sierra", "tundra", "umber", "violet",
         "willow", "yarrow", "zephyr"]
NAMES = ["Ada", "Boris", "Chloe", "Dmitri", "Elena", "Farah", "Gustav", "Hana", "Ivan", "Jonas", "Keiko", "Liam",
         "Mira", "Nadia", "Omar", "Priya", "Quentin", "Rosa", "Sven", "Tariq", "Uma", "Viktor", "Wen", "Yusuf", "Zoe"]
SENTENCES = ["the meeting moved to thursday", "remember to water the plants", "draft the quarterly report",
             "call the supplier about the delay", "the printer on floor two is broken", "book a room for the review",
             "lunch order goes out at noon", "update the onboarding checklist", "archive last year's invoices"]
LEVELS = ["INFO", "WARN", "ERROR", "DEBUG"]
COMPONENTS = ["auth", "db", "cache", "api", "worker", "scheduler"]
EVENTS = ["request served", "connection opened", "retrying job", "cache miss", "user logged in", "lock timeout",
          "disk usage high", "config reloaded", "queue drained"]
REGIONS = ["EU", "US", "APAC", "LATAM"]
PRODUCTS = ["widget", "gadget", "gizmo", "doohickey", "sprocket"]


def first_int(text: str) -> str:
    """The first token of `text` as an integer string (ValueError if it is not one)."""
    return str(int(text.split()[0]))


def only_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) != 1:
        raise ValueError(f"expected one line, got {len(lines)}")
    return lines[0].strip()


def pick(rng: random.Random, pool: list[str], k: int) -> list[str]:
    return rng.sample(pool, k)


# ---------------------------------------------------------------------------------------------------------
# Held-in families


def count_matches(rng: random.Random) -> Case:
    level = rng.choice(["WARN", "ERROR"])
    lines = [f"2024-06-01 {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d} "
             f"{rng.choice(LEVELS)} {rng.choice(COMPONENTS)}: {rng.choice(EVENTS)}" for _ in range(rng.randint(30, 80))]
    count = sum(f" {level} " in line for line in lines)
    ask = rng.choice([f"How many lines of logs/app.log have the level {level}?",
                      f"Count the {level} entries in the log file logs/app.log."])
    return Case({"logs/app.log": "\n".join(lines) + "\n", "logs/README": "application logs\n"}, ask,
                {"answer": str(count), "match": "int"},
                [("Let me look at the log's format first.", "head -n 5 logs/app.log"),
                 (f"The level is the third field; I count the lines with {level} there.",
                  f"grep -c ' {level} ' logs/app.log")],
                lambda outs: first_int(outs[1]), f"grep counted the {level} lines.")


def count_files(rng: random.Random) -> Case:
    ext = rng.choice(["py", "md", "json"])
    dirs = ["src", "src/core", "src/utils", "src/core/io", "docs"]
    files = {}
    for _ in range(rng.randint(10, 22)):
        path = f"{rng.choice(dirs)}/{rng.choice(WORDS)}_{rng.randint(1, 99)}.{rng.choice(['py', 'md', 'json', 'txt'])}"
        files[path] = f"# {path}\n"
    count = sum(p.startswith("src/") and p.endswith(f".{ext}") for p in files)
    ask = rng.choice([f"How many .{ext} files are there under src/, subdirectories included?",
                      f"Count the files ending in .{ext} anywhere below the src directory."])
    return Case(files, ask, {"answer": str(count), "match": "int"},
                [("First a look at the tree.", "find . -type d | sort"),
                 (f"Now count the .{ext} files below src/.", f"find src -type f -name '*.{ext}' | wc -l")],
                lambda outs: first_int(outs[1]), f"find listed the .{ext} files under src/ and wc counted them.")


def which_file(rng: random.Random) -> Case:
    names = pick(rng, WORDS, rng.randint(5, 9))
    code = f"{rng.choice(WORDS)}-{rng.randint(100, 999)}"
    holder = rng.choice(names)
    files = {}
    for name in names:
        lines = [rng.choice(SENTENCES) for _ in range(rng.randint(2, 6))]
        if name == holder:
            lines.insert(rng.randint(0, len(lines)), f"the access code is {code}")
        files[f"notes/{name}.txt"] = "\n".join(lines) + "\n"
    ask = rng.choice([f"Which file in notes/ mentions the code {code}? Answer with its path, e.g. notes/x.txt.",
                      f"One of the notes contains {code}. Give the path of that file (like notes/x.txt)."])
    return Case(files, ask, {"answer": f"notes/{holder}.txt", "match": "path"},
                [("Let me see which notes there are.", "ls notes"),
                 (f"I search them for {code}.", f"grep -rl -- '{code}' notes")],
                lambda outs: only_line(outs[1]), f"grep found {code} in one file.")


def csv_sum(rng: random.Random) -> Case:
    region = rng.choice(REGIONS)
    rows = [(f"2024-06-{rng.randint(1, 30):02d}", rng.choice(REGIONS), rng.choice(PRODUCTS), rng.randint(1, 500))
            for _ in range(rng.randint(15, 40))]
    total = sum(r[3] for r in rows if r[1] == region)
    text = "date,region,product,amount\n" + "".join(f"{d},{g},{p},{a}\n" for d, g, p, a in rows)
    ask = rng.choice([f"What is the total amount of the {region} rows in sales.csv?",
                      f"Sum the amount column of sales.csv over the rows whose region is {region}."])
    return Case({"sales.csv": text}, ask, {"answer": str(total), "match": "int"},
                [("Let me check the columns.", "head -n 3 sales.csv"),
                 (f"Region is column 2 and amount column 4; awk sums the {region} rows.",
                  f"awk -F, -v r={region} 'NR > 1 && $2 == r {{ s += $4 }} END {{ print s + 0 }}' sales.csv")],
                lambda outs: first_int(outs[1]), f"awk summed the {region} amounts.")


def replace_word(rng: random.Random) -> Case:
    old, new = rng.choice([("localhost", "127.0.0.1"), ("staging", "production"), ("alice", "bob")])
    pool = ["host = {w}", "port = {p}", "url = http://{w}:{p}/api", "backup_host = {w}", "timeout = 30",
            "owner = {w}", "retries = 3", "log_level = info"]
    lines = ["[app]"] + [rng.choice(pool).format(w=old, p=rng.randint(1000, 9999)) for _ in range(rng.randint(5, 12))]
    lines.insert(rng.randint(1, len(lines)), f"host = {old}")  # at least one occurrence
    before = "\n".join(lines) + "\n"
    ask = rng.choice([f"In config/app.ini, replace every occurrence of {old} with {new}. Change nothing else.",
                      f"Edit config/app.ini so that each {old} becomes {new}; leave the rest of the file as it is."])
    return Case({"config/app.ini": before, "config/README": f"settings; do not edit\n{old}\n"}, ask,
                {"files": {"config/app.ini": before.replace(old, new),
                           "config/README": f"settings; do not edit\n{old}\n"}},
                [("Let me see the file first.", "cat config/app.ini"),
                 (f"sed replaces every {old} in place.", f"sed -i 's/{old}/{new}/g' config/app.ini"),
                 ("Check the result.", f"grep -c '{old}' config/app.ini; grep -c '{new}' config/app.ini")],
                None, f"No {old} is left in config/app.ini.")


def move_files(rng: random.Random) -> Case:
    names = pick(rng, WORDS, rng.randint(5, 10))
    files = {}
    logs = []
    for name in names:
        ext = rng.choice(["log", "log", "txt", "csv"])
        files[f"{name}.{ext}"] = f"{name} {rng.randint(0, 10**6)}\n"
        if ext == "log":
            logs.append(f"{name}.log")
    if not logs:
        files[f"{names[0]}-extra.log"] = "extra\n"
        logs.append(f"{names[0]}-extra.log")
    after = {(f"archive/{p}" if p in logs else p): text for p, text in files.items()}
    ask = rng.choice(["Move every .log file in the working directory into a new directory named archive.",
                      "Create a directory archive/ and move all the .log files of the working directory into it."])
    return Case(files, ask, {"files": after, "absent": logs},
                [("Let me list the directory.", "ls"),
                 ("Make archive/ and move the .log files there.", "mkdir -p archive && mv -- *.log archive/"),
                 ("Check what moved.", "ls; ls archive")],
                None, "The .log files are in archive/.")


def write_script(rng: random.Random) -> Case:
    n = rng.randint(3, 15)
    data = "".join(f"{rng.choice(SENTENCES)}\n" for _ in range(n))
    runs = [{"input": "".join(f"line {i}\n" for i in range(k)), "output": str(k)} for k in rng.sample(range(1, 40), 2)]
    ask = rng.choice(["Write an executable shell script count_lines.sh that prints only the number of lines of the "
                      "file given as its first argument (try it on data.txt).",
                      "Create count_lines.sh, an executable script: `./count_lines.sh FILE` must print just the "
                      "number of lines in FILE. data.txt is there to test it."])
    return Case({"data.txt": data}, ask, {"files": {"data.txt": data}, "script": {"name": "count_lines.sh",
                                                                                    "runs": runs}},
                [("wc -l reading stdin prints just the count; I write the script with printf.",
                  "printf '#!/bin/sh\\nwc -l < \"$1\"\\n' > count_lines.sh && chmod +x count_lines.sh"),
                 ("Try it on data.txt and compare with wc.", "./count_lines.sh data.txt; wc -l data.txt")],
                None, "The script prints the line count of its argument.")


# ---------------------------------------------------------------------------------------------------------
# Held-out families


def largest_file(rng: random.Random) -> Case:
    names = pick(rng, WORDS, rng.randint(4, 9))
    sizes = rng.sample(range(10, 5000), len(names))
    files = {f"data/{rng.choice(['', 'raw/', 'old/'])}{name}.bin": "x" * size for name, size in zip(names, sizes)}
    largest = max(files, key=lambda p: len(files[p]))
    ask = rng.choice(["Which file under data/ (subdirectories included) is the largest? Answer with its path.",
                      "Find the biggest file anywhere below data/ and give its path, e.g. data/x.bin."])
    return Case(files, ask, {"answer": largest, "match": "path"},
                [("List the files with their sizes, largest last.",
                  "find data -type f -printf '%s %p\\n' | sort -n | tail -n 3")],
                lambda outs: outs[0].splitlines()[-1].split(maxsplit=1)[1].strip(),
                "The last line of the sorted listing is the largest file.")


def unique_words(rng: random.Random) -> Case:
    words = pick(rng, WORDS, rng.randint(5, 15))
    lines = words + [rng.choice(words) for _ in range(rng.randint(5, 30))]
    rng.shuffle(lines)
    ask = rng.choice(["words.txt has one word per line. How many distinct words does it contain?",
                      "How many different words appear in words.txt (one word per line, repeats allowed)?"])
    return Case({"words.txt": "\n".join(lines) + "\n"}, ask, {"answer": str(len(words)), "match": "int"},
                [("A peek at the file.", "head -n 5 words.txt"),
                 ("sort -u keeps one of each; wc counts them.", "sort -u words.txt | wc -l")],
                lambda outs: first_int(outs[1]), "sort -u | wc -l gave the number of distinct words.")


def sort_lines(rng: random.Random) -> Case:
    names = pick(rng, NAMES, rng.randint(5, 15))
    text = "\n".join(names) + "\n"
    ask = rng.choice(["Write the lines of names.txt, sorted alphabetically, to sorted.txt (keep names.txt as is).",
                      "Create sorted.txt holding the names of names.txt in alphabetical order; "
                      "don't modify names.txt."])
    return Case({"names.txt": text}, ask, {"files": {"names.txt": text, "sorted.txt": "\n".join(sorted(names)) + "\n"}},
                [("Sort into a new file.", "sort names.txt > sorted.txt"), ("Check it.", "head -n 3 sorted.txt")],
                None, "sorted.txt holds the sorted names.")


def rename_ext(rng: random.Random) -> Case:
    names = pick(rng, WORDS, rng.randint(4, 9))
    files = {f"docs/{name}.{rng.choice(['txt', 'txt', 'csv'])}": f"{name}\n" for name in names}
    if not any(p.endswith(".txt") for p in files):
        files[f"docs/{names[0]}-notes.txt"] = "notes\n"
    after = {(p[:-4] + ".md" if p.endswith(".txt") else p): text for p, text in files.items()}
    ask = rng.choice(["Rename every .txt file in docs/ so that it ends in .md instead (same base name).",
                      "In docs/, change the extension of all .txt files to .md."])
    return Case(files, ask, {"files": after, "absent": [p for p in files if p.endswith(".txt")]},
                [("See what is in docs/.", "ls docs"),
                 ("Rename each .txt to .md with a loop.", 'for f in docs/*.txt; do mv -- "$f" "${f%.txt}.md"; done'),
                 ("Check.", "ls docs")],
                None, "Every .txt file in docs/ now ends in .md.")


FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("count_matches", "held_in", "answer", count_matches),
    Family("count_files", "held_in", "answer", count_files),
    Family("which_file", "held_in", "answer", which_file),
    Family("csv_sum", "held_in", "answer", csv_sum),
    Family("replace_word", "held_in", "state", replace_word),
    Family("move_files", "held_in", "state", move_files),
    Family("write_script", "held_in", "state", write_script),
    Family("largest_file", "held_out", "answer", largest_file),
    Family("unique_words", "held_out", "answer", unique_words),
    Family("sort_lines", "held_out", "state", sort_lines),
    Family("rename_ext", "held_out", "state", rename_ext),
]}


def make_case(family: str, gen: str) -> Case:
    """The case of `family` for generator key `gen` (same key, same case, on every run and machine)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown shell task family {family!r}")
    return FAMILIES[family].build(random.Random(f"shell:{family}:{gen}"))
