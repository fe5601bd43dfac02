"""agentledger: event-sourced multi-agent orchestration on one auditable log."""

__version__ = "0.1.0"
__all__ = ["__version__"]
