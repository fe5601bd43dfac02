"""The shared blackboard: a projection of ``blackboard.posted`` events and the API to post/read."""

from .board import BlackboardProjection, BlackboardState, Board, Entry, post

__all__ = ["BlackboardProjection", "BlackboardState", "Board", "Entry", "post"]
