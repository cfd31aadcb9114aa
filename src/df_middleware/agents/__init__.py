"""The agent directory (SPEC 6.5, R-AG-5): who the agents are and how a GHL contact is matched to one.

`agents_file.py` reads `AGENTS_FILE` (YAML or JSON, every problem named by its line); `directory.py`
fills missing GHL and Aloware user ids by exact email match and applies the file to `agent_directory`
in one transaction; agent resolution reads the result through `active_agents`.

This room may import `config`, `db`, `connectors` and `phones`; never `sync`, `queue`, `ingest` or
`cli` (tests/test_rooms_and_doors.py).
"""
