"""A note-taking backend: an in-memory store exposed as MCP tools, resources and a prompt.

It gives the gateway a backend with state that a client can change and read
back, and its ``search`` tool shares its name with the weather backend's, so
the pair exercises tool-name collisions.

Run it with ``python -m examples.backends.notes --port 9001``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from mcp.server.mcpserver import Context, MCPServer, UserMessage
from mcp.server.mcpserver.exceptions import ResourceNotFoundError
from pydantic import BaseModel, Field

from examples.backends import run_backend

DEFAULT_PORT = 9001


class Note(BaseModel):
    id: int = Field(description="Identifier, also the {id} in notes://{id}")
    title: str
    body: str
    tags: list[str] = Field(default_factory=list)


@dataclass
class NoteStore:
    """Process-local, so every restart starts empty and tests stay independent."""

    _notes: dict[int, Note] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def add(self, title: str, body: str, tags: Sequence[str]) -> Note:
        note = Note(id=next(self._ids), title=title, body=body, tags=sorted(set(tags)))
        self._notes[note.id] = note
        return note

    def get(self, note_id: int) -> Note | None:
        return self._notes.get(note_id)

    def all(self, tag: str | None = None) -> list[Note]:
        return [note for note in self._notes.values() if tag is None or tag in note.tags]

    def delete(self, note_id: int) -> bool:
        return self._notes.pop(note_id, None) is not None

    def search(self, query: str) -> list[Note]:
        needle = query.casefold()
        return [
            note
            for note in self._notes.values()
            if needle in note.title.casefold()
            or needle in note.body.casefold()
            or any(needle == tag.casefold() for tag in note.tags)
        ]


def create_server(store: NoteStore | None = None) -> MCPServer:
    """Taking the store as a parameter lets a test fill or inspect it in-process."""
    notes = store if store is not None else NoteStore()
    server: MCPServer = MCPServer(
        "notes",
        title="Notes",
        instructions="Keep short notes: add them, list or search them, read one as notes://{id}.",
        version="0.1.0",
        log_level="WARNING",
    )

    @server.tool()
    def add_note(title: str, body: str, tags: list[str] | None = None) -> Note:
        """Store a note and return it with its new id."""
        return notes.add(title, body, tags or [])

    @server.tool()
    def list_notes(tag: str | None = None) -> list[Note]:
        """List stored notes, optionally only those carrying ``tag``."""
        return notes.all(tag)

    @server.tool()
    def search(query: str) -> list[Note]:
        """Find notes whose title or body contains ``query``, or that carry it as a tag."""
        return notes.search(query)

    def delete_note(note_id: int) -> bool:
        """Delete a note; True if it existed."""
        return notes.delete(note_id)

    @server.tool()
    async def enable_deletion(ctx: Context) -> str:
        """Add the ``delete_note`` tool, and tell clients the tool list changed."""
        if "delete_note" not in {tool.name for tool in await server.list_tools()}:
            server.add_tool(delete_note)
        await ctx.session.send_tool_list_changed()
        return "delete_note is now available"

    @server.resource("notes://index", name="index", mime_type="application/json")
    def index() -> str:
        """Ids and titles of every stored note."""
        return json.dumps([{"id": note.id, "title": note.title} for note in notes.all()])

    @server.resource("notes://{id}", name="note", mime_type="application/json")
    def note(id: str) -> str:
        """One note, addressed by its id."""
        found = notes.get(int(id)) if id.isdecimal() else None
        if found is None:
            raise ResourceNotFoundError(f"no note with id {id!r}")
        return found.model_dump_json()

    @server.prompt()
    def summarize_notes(tag: str | None = None) -> list[UserMessage]:
        """Ask the model to summarise the stored notes, optionally only one tag's."""
        selected = notes.all(tag)
        if not selected:
            return [UserMessage("There are no notes yet. Say so in one sentence.")]
        listing = "\n".join(f"- {n.title}: {n.body}" for n in selected)
        return [UserMessage(f"Summarise these notes in a few bullet points:\n{listing}")]

    return server


def main(argv: Sequence[str] | None = None) -> None:
    run_backend(
        create_server,
        description="In-memory notes MCP backend.",
        default_port=DEFAULT_PORT,
        argv=argv,
    )


if __name__ == "__main__":
    main()
