"""Deciding what to do next: the unified customer profile, uplift of each action, the contact
policy that holds across channel systems, and the next-best-action engine that combines them."""

from models._faces import lazy_face

__all__, __getattr__, __dir__ = lazy_face(
    __name__,
    {
        "ContactLedger": "contact_policy",
        "ContactPolicy": "contact_policy",
        "CustomerProfiles": "profile",
        "LayeredLedger": "contact_policy",
        "MultiArmUpliftLearner": "uplift",
        "NextBestActionEngine": "nba",
        "load_contact_policy": "contact_policy",
    },
)
