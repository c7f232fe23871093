"""Deciding what to do next: the unified customer profile, uplift of each action, the contact
policy that holds across channel systems, and the next-best-action engine that combines them."""

from models.decisions.contact_policy import ContactPolicy, load_contact_policy
from models.decisions.nba import NextBestActionEngine
from models.decisions.profile import CustomerProfiles
from models.decisions.uplift import MultiArmUpliftLearner

__all__ = [
    "ContactPolicy",
    "CustomerProfiles",
    "MultiArmUpliftLearner",
    "NextBestActionEngine",
    "load_contact_policy",
]
