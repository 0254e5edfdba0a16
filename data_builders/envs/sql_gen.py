"""Generated tasks for the `sql` environment: five small table families and question templates whose query the
generator knows, deterministic from a seed.

`generate_sql_tasks(seed)` builds each family's tables from the seed (rows drawn from fixed pools, numbers distinct
within a column so "the highest" has one answer), then instantiates every template a few times: lookups, counts,
argmax / argmin, averages and sums per category, lists above a threshold, the most common category, a join or two,
and INSERT / UPDATE / DELETE. Each task's gold holds its tables, its query, and what the query gives: the answers
(`answers_from_rows` of its result) for a SELECT, the table hash after it (`table_state_md5`) for a change. Half of
the prompts name the tables and headers the way AgentBench's do; the others leave the schema to be explored.

Split by family: employees, retail and movies are held-in; flights and library are held-out.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .base import Task
from .sql_db import answers_from_rows, open_database, table_state_md5

PER_TEMPLATE = 4  # instances of each template per family and seed
SCHEMA_HINT = "Additional table information about the question: "

_FIRST = ["Ada", "Ben", "Chloe", "Dmitri", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemal", "Lena",
          "Mateo", "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tara", "Uma", "Victor", "Wen", "Yara"]
_LAST = ["Abbott", "Brandt", "Costa", "Dahl", "Eze", "Fischer", "Garcia", "Haddad", "Ito", "Jensen", "Kowalski",
         "Lindqvist", "Moreau", "Nakamura", "Okafor", "Petrov", "Quiroga", "Rossi", "Santos", "Tanaka"]
_CITIES = ["Lyon", "Porto", "Graz", "Leeds", "Turin", "Ghent", "Bergen", "Malmo"]


def _people(rng: random.Random, n: int) -> list[str]:
    names = [f"{f} {s}" for f in _FIRST for s in _LAST]
    return rng.sample(names, n)


def _distinct(rng: random.Random, lo: int, hi: int, step: int, n: int) -> list[int]:
    return rng.sample(range(lo, hi, step), n)


def _table(name: str, columns: list[tuple[str, str]], rows: list[list[Any]]) -> dict[str, Any]:
    return {"table_name": name, "typed": True,
            "table_info": {"columns": [{"name": c, "type": t} for c, t in columns], "rows": rows}}


# ---------------------------------------------------------------------------------------------------------
# Families: the main table's roles (a unique key, a category, numbers) drive the shared templates


@dataclass(frozen=True)
class Family:
    name: str
    split: str
    table: str
    singular: str
    plural: str
    key: str  # a text column naming each row uniquely
    category: str  # a text column with a few repeated values
    numbers: dict[str, tuple[str, bool]]  # column -> (how a question names it, whether sums and averages make sense)
    spare_keys: list[str] = field(default_factory=list)  # keys for INSERT, never in the table


def _employees(rng: random.Random) -> tuple[Family, list[dict[str, Any]]]:
    names = _people(rng, 14)
    depts = ["Engineering", "Sales", "Marketing", "Finance"]
    rows = [[n, rng.choice(depts), rng.choice(_CITIES), s, y]
            for n, s, y in zip(names[:12], _distinct(rng, 42000, 150000, 500, 12), _distinct(rng, 2004, 2025, 1, 12))]
    fam = Family("employees", "held_in", "employees", "employee", "employees", "name", "department",
                 {"salary": ("salary", True), "hire_year": ("hiring year", False)}, names[12:])
    cols = [("name", "TEXT"), ("department", "TEXT"), ("city", "TEXT"), ("salary", "INTEGER"), ("hire_year", "INTEGER")]
    return fam, [_table("employees", cols, rows)]


_PRODUCTS = {"Kitchen": ["Kettle", "Toaster", "Blender", "Coffee Grinder", "Rice Cooker"],
             "Garden": ["Hose", "Rake", "Planter", "Pruning Shears", "Lawn Sprinkler"],
             "Office": ["Desk Lamp", "Stapler", "Notebook", "Monitor Stand", "Desk Organizer"]}


def _retail(rng: random.Random) -> tuple[Family, list[dict[str, Any]]]:
    items = [(p, c) for c, ps in _PRODUCTS.items() for p in ps]
    rng.shuffle(items)
    prices = [c / 100 for c in _distinct(rng, 299, 9999, 50, 12)]
    rows = [[p, c, price, stock] for (p, c), price, stock in zip(items[:12], prices, _distinct(rng, 0, 300, 1, 12))]
    customers = rng.sample(_FIRST, 6)
    orders = [[1001 + i, rng.choice(rows)[0], rng.choice(customers), rng.randint(1, 9)] for i in range(16)]
    fam = Family("retail", "held_in", "products", "product", "products", "name", "category",
                 {"price": ("price", False), "stock": ("stock level", True)}, [p for p, _ in items[12:]])
    return fam, [_table("products", [("name", "TEXT"), ("category", "TEXT"), ("price", "REAL"), ("stock", "INTEGER")],
                        rows),
                 _table("orders", [("order_id", "INTEGER"), ("product", "TEXT"), ("customer", "TEXT"),
                                   ("quantity", "INTEGER")], orders)]


_TITLES = ["The Glass Orchard", "Midnight Ferry", "Copper Sky", "Quiet Harbor", "The Last Cartographer",
           "Paper Lanterns", "Northern Static", "A Field of Bells", "Salt and Iron", "The Hollow Crown",
           "Velvet Circuit", "Winter Arcade", "Echo Valley", "The Ninth Lighthouse"]


def _movies(rng: random.Random) -> tuple[Family, list[dict[str, Any]]]:
    titles = rng.sample(_TITLES, 14)
    genres = ["Drama", "Comedy", "Thriller", "Sci-Fi"]
    rows = [[t, rng.choice(genres), y, r / 10, b / 10] for t, y, r, b in
            zip(titles[:12], _distinct(rng, 1990, 2025, 1, 12), _distinct(rng, 50, 95, 1, 12),
                _distinct(rng, 50, 4000, 7, 12))]
    fam = Family("movies", "held_in", "movies", "movie", "movies", "title", "genre",
                 {"rating": ("rating", False), "box_office_musd": ("box office (million USD)", True),
                  "release_year": ("release year", False)}, titles[12:])
    cols = [("title", "TEXT"), ("genre", "TEXT"), ("release_year", "INTEGER"), ("rating", "REAL"),
            ("box_office_musd", "REAL")]
    return fam, [_table("movies", cols, rows)]


_AIRPORTS = ["LIS", "OSL", "VIE", "DUB", "ATH", "PRG", "CPH", "ZRH"]


def _flights(rng: random.Random) -> tuple[Family, list[dict[str, Any]]]:
    airlines = ["Aurora Air", "Bluefin", "Cirrus Lines"]
    numbers = [f"{code}{n}" for code, n in zip(rng.choices(["AU", "BF", "CL"], k=14), _distinct(rng, 100, 999, 1, 14))]
    rows = []
    for no, dur, price in zip(numbers[:12], _distinct(rng, 45, 400, 5, 12), _distinct(rng, 39, 600, 1, 12)):
        origin, dest = rng.sample(_AIRPORTS, 2)
        rows.append([no, rng.choice(airlines), origin, dest, dur, price])
    fam = Family("flights", "held_out", "flights", "flight", "flights", "flight_no", "airline",
                 {"duration_min": ("duration in minutes", True), "price_usd": ("price in USD", True)}, numbers[12:])
    cols = [("flight_no", "TEXT"), ("airline", "TEXT"), ("origin", "TEXT"), ("destination", "TEXT"),
            ("duration_min", "INTEGER"), ("price_usd", "INTEGER")]
    return fam, [_table("flights", cols, rows)]


_BOOKS = ["River of Clocks", "The Amber Index", "Small Gods of Tin", "Letters to Orion", "The Marble Garden",
          "Fathom", "A Map of Rain", "The Quiet Engine", "Lanterns at Sea", "Ashes of Summer", "The Paper Fox",
          "Tidewater", "Under Glass", "The Long Meridian"]


def _library(rng: random.Random) -> tuple[Family, list[dict[str, Any]]]:
    titles = rng.sample(_BOOKS, 14)
    authors = rng.sample([f"{f} {s}" for f in _FIRST for s in _LAST], 5)
    genres = ["Fantasy", "Mystery", "History", "Poetry"]
    rows = [[t, rng.choice(authors), rng.choice(genres), y, c] for t, y, c in
            zip(titles[:12], _distinct(rng, 1950, 2025, 1, 12), _distinct(rng, 1, 40, 1, 12))]
    members = rng.sample(_FIRST, 5)
    loans = [[501 + i, rng.choice(rows)[0], rng.choice(members), rng.randint(1, 30)] for i in range(14)]
    fam = Family("library", "held_out", "books", "book", "books", "title", "genre",
                 {"published_year": ("publication year", False), "copies": ("number of copies", True)}, titles[12:])
    return fam, [_table("books", [("title", "TEXT"), ("author", "TEXT"), ("genre", "TEXT"),
                                  ("published_year", "INTEGER"), ("copies", "INTEGER")], rows),
                 _table("loans", [("loan_id", "INTEGER"), ("book", "TEXT"), ("member", "TEXT"), ("days", "INTEGER")],
                        loans)]


FAMILIES = {"employees": _employees, "retail": _retail, "movies": _movies, "flights": _flights, "library": _library}


# ---------------------------------------------------------------------------------------------------------
# Templates: (template name, statement type, question, query) candidates per family


def lit(value: Any) -> str:
    """A SQL literal: numbers as they are, text in single quotes ('' inside)."""
    return repr(value) if isinstance(value, (int, float)) else "'" + str(value).replace("'", "''") + "'"


Candidate = tuple[str, str, str, str]  # template, type (SELECT / INSERT / UPDATE / DELETE), question, query


def _shared_candidates(f: Family, main: dict[str, Any], rng: random.Random) -> list[list[Candidate]]:
    """Per template, every instance the family's main table allows."""
    cols = [c["name"] for c in main["table_info"]["columns"]]
    rows = [dict(zip(cols, r)) for r in main["table_info"]["rows"]]
    keys = [r[f.key] for r in rows]
    cats = sorted({r[f.category] for r in rows})
    t, k, c = f.table, f.key, f.category
    out: list[list[Candidate]] = [[], [], [], [], [], [], [], [], [], []]
    for col, (noun, additive) in f.numbers.items():
        for key in keys:
            q = rng.choice([f"What is the {noun} of {key}?", f"Tell me the {noun} of the {f.singular} {key}."])
            out[0].append(("lookup", "SELECT", q, f"SELECT {col} FROM {t} WHERE {k} = {lit(key)}"))
        for word, order in (("highest", "DESC"), ("lowest", "ASC")):
            q = rng.choice([f"Which {f.singular} has the {word} {noun}?",
                            f"Find the {f.singular} with the {word} {noun}."])
            out[1].append(("argmax" if order == "DESC" else "argmin", "SELECT", q,
                           f"SELECT {k} FROM {t} ORDER BY {col} {order} LIMIT 1"))
        values = sorted((r[col] for r in rows), reverse=True)
        for n_above in (2, 3, 4):
            q = rng.choice([f"List every {f.singular} whose {noun} is above {values[n_above]}.",
                            f"Which {f.plural} have a {noun} greater than {values[n_above]}?"])
            out[2].append(("list_above", "SELECT", q, f"SELECT {k} FROM {t} WHERE {col} > {values[n_above]!r}"))
        if additive:
            for cat in cats:
                q = rng.choice([f"What is the average {noun} of the {f.plural} in {c} {cat}? Round it to 2 decimals.",
                                f"Give the mean {noun} (2 decimals) over {f.plural} whose {c} is {cat}."])
                out[3].append(("avg_by_category", "SELECT", q,
                               f"SELECT ROUND(AVG({col}), 2) FROM {t} WHERE {c} = {lit(cat)}"))
                q = rng.choice([f"What is the total {noun} of the {f.plural} in {c} {cat}?",
                                f"Sum the {noun} over all {f.plural} whose {c} is {cat}."])
                out[4].append(("sum_by_category", "SELECT", q, f"SELECT SUM({col}) FROM {t} WHERE {c} = {lit(cat)}"))
    for cat in cats:
        q = rng.choice([f"How many {f.plural} have {c} {cat}?", f"Count the {f.plural} in {c} {cat}."])
        out[5].append(("count_by_category", "SELECT", q, f"SELECT COUNT(*) FROM {t} WHERE {c} = {lit(cat)}"))
    counts = Counter(r[c] for r in rows).most_common()
    if len(counts) == 1 or counts[0][1] > counts[1][1]:  # only when one category is strictly the most common
        q = rng.choice([f"Which {c} has the most {f.plural}?", f"What is the most common {c} among the {f.plural}?"])
        out[6].append(("most_common_category", "SELECT", q,
                       f"SELECT {c} FROM {t} GROUP BY {c} ORDER BY COUNT(*) DESC LIMIT 1"))
    for key in f.spare_keys:
        new = dict(rng.choice(rows), **{k: key})
        for col in f.numbers:  # fresh numbers, so the new row is not a copy
            new[col] = type(new[col])(round(new[col] * rng.uniform(0.8, 1.2), 1 if isinstance(new[col], float) else 0))
        described = ", ".join(f"{name} {new[name]}" for name in cols)
        q = rng.choice([f"Add a new {f.singular} to the {t} table: {described}.",
                        f"Insert this {f.singular} into {t}: {described}."])
        out[7].append(("insert", "INSERT", q, f"INSERT INTO {t} ({', '.join(cols)}) VALUES "
                                              f"({', '.join(lit(new[name]) for name in cols)})"))
    for key in keys:
        col, (noun, _) = rng.choice(sorted(f.numbers.items()))
        old = next(r[col] for r in rows if r[k] == key)
        value = old + 1 if isinstance(old, int) else round(old + 0.5, 2)
        q = rng.choice([f"Change the {noun} of {key} to {value}.", f"Update {t}: set the {noun} of {key} to {value}."])
        out[8].append(("update", "UPDATE", q, f"UPDATE {t} SET {col} = {value!r} WHERE {k} = {lit(key)}"))
        q = rng.choice([f"Remove {key} from the {t} table.", f"Delete the {f.singular} {key} from {t}."])
        out[9].append(("delete", "DELETE", q, f"DELETE FROM {t} WHERE {k} = {lit(key)}"))
    return out


def _join_candidates(f: Family, tables: list[dict[str, Any]], rng: random.Random) -> list[list[Candidate]]:
    """The two-table families' own questions."""
    if f.name == "retail":
        cats = sorted(_PRODUCTS)
        units = [("units_by_category", "SELECT", f"How many units of {cat} products were ordered in total?",
                  "SELECT SUM(o.quantity) FROM orders o JOIN products p ON o.product = p.name "
                  f"WHERE p.category = {lit(cat)}") for cat in cats]
        customers = sorted({r[2] for r in tables[1]["table_info"]["rows"]})
        spend = [("customer_spend", "SELECT", f"How much has {who} spent in total (quantity times price)? "
                  "Round it to 2 decimals.",
                  "SELECT ROUND(SUM(o.quantity * p.price), 2) FROM orders o JOIN products p ON o.product = p.name "
                  f"WHERE o.customer = {lit(who)}") for who in customers]
        return [units, spend]
    if f.name == "library":
        genres = sorted({r[2] for r in tables[0]["table_info"]["rows"]})
        on_loan = [("loans_by_genre", "SELECT", f"How many loans are there of {g} books?",
                    f"SELECT COUNT(*) FROM loans l JOIN books b ON l.book = b.title WHERE b.genre = {lit(g)}")
                   for g in genres]
        members = sorted({r[2] for r in tables[1]["table_info"]["rows"]})
        titles = [("titles_of_member", "SELECT", f"Which book titles has {m} borrowed?",
                   f"SELECT DISTINCT b.title FROM loans l JOIN books b ON l.book = b.title WHERE l.member = {lit(m)}")
                  for m in members]
        return [on_loan, titles]
    return []


def _schema_line(tables: list[dict[str, Any]]) -> str:
    heads = [",".join(c["name"] for c in t["table_info"]["columns"]) for t in tables]
    if len(tables) == 1:
        return f"The name of this table is {tables[0]['table_name']}, and the headers of this table are {heads[0]}."
    parts = [f"{t['table_name']} (headers: {h})" for t, h in zip(tables, heads)]
    return "The tables are " + " and ".join(parts) + "."


def _gold(tables: list[dict[str, Any]], kind: str, query: str) -> dict[str, Any]:
    con = open_database(tables)
    try:
        if kind == "SELECT":
            return {"kind": "select", "tables": tables, "query": query,
                    "answers": answers_from_rows(con.execute(query).fetchall())}
        con.execute(query)
        return {"kind": "modify", "tables": tables, "query": query, "state_md5": table_state_md5(con, tables)}
    finally:
        con.close()


def generate_sql_tasks(seed: int = 0) -> list[Task]:
    """Every generated task for `seed`: the same seed gives the same tables, questions and order."""
    tasks: list[Task] = []
    for name, make in FAMILIES.items():
        rng = random.Random(f"sql/{seed}/{name}")  # one stream per family: adding a family changes no other
        fam, tables = make(rng)
        groups = _shared_candidates(fam, tables[0], rng) + _join_candidates(fam, tables, rng)
        for group in groups:
            for j, (template, kind, question, query) in enumerate(rng.sample(group, min(PER_TEMPLATE, len(group)))):
                prompt = f"Question: {question}"
                if rng.random() < 0.5:
                    prompt = SCHEMA_HINT + _schema_line(tables) + "\n" + prompt
                tasks.append({"id": f"gen{seed}-{name}-{template}-{j}", "env": "sql", "split": fam.split,
                              "instruction": prompt, "gold": _gold(tables, kind, query),
                              "meta": {"source": "generated", "family": name, "template": template, "type": kind}})
    random.Random(f"sql/{seed}/order").shuffle(tasks)
    return tasks
