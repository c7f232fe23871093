"""Customer lifetime value: how many purchases each customer will make over a horizon, what
they will be worth and how likely the customer is still active (`LifetimeValueModel`), from the
BG/NBD purchase model (`BetaGeoPurchaseModel`) and the Gamma-Gamma spend model
(`GammaGammaSpendModel`), both fitted here by maximum likelihood. Read by the unified profile
(`models.decisions.profile`); imports no other model package."""

from models._faces import lazy_face

__all__, __getattr__, __dir__ = lazy_face(
    __name__,
    {
        "BetaGeoPurchaseModel": "_bgnbd",
        "GammaGammaSpendModel": "_gamma_gamma",
        "LifetimeValueModel": "_lifetime_value",
        "TRANSACTION_TS": "_transactions",
        "TRANSACTION_VALUE": "_transactions",
        "purchase_transactions": "_transactions",
        "rfm_summary": "_transactions",
    },
)
