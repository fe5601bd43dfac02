"""agentledger.projections: built in a later issue (see DESIGN.md)."""

__all__: list[str] = []
