#!/usr/bin/env python3
"""Writes the entity data of the AuthZEN interop packs from the interop data.

Usage: python3 examples/authzen/convert.py [INTEROP_DIR]

INTEROP_DIR is the folder of the AuthZEN interop data (with `todo/`,
`gateway/`, `search/` and `idp/`); by default `../shared/authzen-interop`
relative to the repository root. The script writes Cedar JSON entity arrays
into `examples/authzen/<pack>/entities/`: entities sorted by type and id,
attributes and parents sorted, keys in the order uid, attrs, parents, 2-space
indent, trailing newline. Running it again on the same data gives the same
files.

Only what the policies need is kept: the idp users' passwords, for instance,
are not copied.
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DEFAULT_DATA = REPO / ".." / "shared" / "authzen-interop"


def uid(type_, id_):
    return {"type": type_, "id": str(id_)}


def entity(type_, id_, attrs=None, parents=()):
    parents = sorted({(p["type"], p["id"]) for p in parents})
    return {
        "uid": uid(type_, id_),
        "attrs": dict(sorted((attrs or {}).items())),
        "parents": [uid(t, i) for t, i in parents],
    }


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def unique(entities, source):
    """Sorts entities by type and id, refusing the same uid twice."""
    seen = set()
    for e in entities:
        key = (e["uid"]["type"], e["uid"]["id"])
        if key in seen:
            sys.exit(f"convert.py: {source}: {key[0]}::\"{key[1]}\" appears twice")
        seen.add(key)
    return sorted(entities, key=lambda e: (e["uid"]["type"], e["uid"]["id"]))


def write(pack, name, entities, source):
    path = HERE / pack / "entities" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    # Keys keep the order they were built in: uid, attrs (sorted), parents.
    text = json.dumps(unique(entities, source), indent=2, ensure_ascii=False)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text + "\n")
    print(f"wrote {path.relative_to(REPO)} ({len(entities)} entities)")


def roles(names):
    return [entity("role", name) for name in sorted(set(names))]


def todo_users(data, user_type):
    """The Todo users (keyed by subject id) as `user_type` entities in their roles."""
    users = load(data / "todo" / "users.json")
    out = []
    for subject_id, u in users.items():
        out.append(
            entity(
                user_type,
                subject_id,
                {"email": u["email"], "name": u["name"]},
                [uid("role", r) for r in u["roles"]],
            )
        )
    all_roles = [r for u in users.values() for r in u["roles"]]
    return out, all_roles


def convert_todo(data):
    users, all_roles = todo_users(data, "user")
    write("todo", "roles.json", roles(all_roles), "todo/users.json")
    write("todo", "users.json", users, "todo/users.json")


def convert_gateway(data):
    identities, all_roles = todo_users(data, "identity")
    write("gateway", "roles.json", roles(all_roles), "todo/users.json")
    write("gateway", "identities.json", identities, "todo/users.json")
    # The routes are the route templates the gateway asks about.
    decisions = load(data / "gateway" / "decisions.json")
    templates = {
        item["request"]["resource"]["id"]
        for item in decisions["evaluation"]
        if item["request"]["resource"]["type"] == "route"
    }
    write("gateway", "routes.json", [entity("route", t) for t in templates], "gateway/decisions.json")


def convert_search(data):
    users = load(data / "search" / "users.json")
    records = load(data / "search" / "records.json")
    write("search", "roles.json", roles(u["role"] for u in users), "search/users.json")
    write(
        "search",
        "users.json",
        [
            entity("user", u["id"], {"department": u["department"]}, [uid("role", u["role"])])
            for u in users
        ],
        "search/users.json",
    )
    # Record ids are numbers in records.json and strings in requests.
    write(
        "search",
        "records.json",
        [
            entity(
                "record",
                r["id"],
                {
                    "title": r["title"],
                    "department": r["department"],
                    "owner": {"__entity": uid("user", r["owner"])},
                },
            )
            for r in records
        ],
        "search/records.json",
    )


def convert_idp(data):
    users = load(data / "idp" / "users.json")
    records = load(data / "idp" / "records.json")
    write("idp", "users.json", [entity("user", u["id"]) for u in users], "idp/users.json")
    write(
        "idp",
        "records.json",
        [entity("record", r["id"], {"owner": {"__entity": uid("user", r["owner"])}}) for r in records],
        "idp/records.json",
    )


def main(argv):
    if len(argv) > 2 or (len(argv) == 2 and argv[1] in ("-h", "--help")):
        print(__doc__.strip())
        return 0 if len(argv) == 2 else 2
    data = Path(argv[1]) if len(argv) == 2 else DEFAULT_DATA
    if not (data / "todo" / "users.json").is_file():
        sys.exit(f"convert.py: {data} is not the AuthZEN interop data (no todo/users.json)")
    convert_todo(data)
    convert_gateway(data)
    convert_search(data)
    convert_idp(data)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
