"""The catalogue: categories, prices, styles, brands, replenishment cycles and complements, and
the per-cell distributions customers draw products from."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ._ids import format_ids
from ._parameters import (
    BRAND_STEMS,
    CATEGORIES,
    CATEGORY_CATALOGUE_SHARE,
    CATEGORY_MEDIAN_PRICE,
    CATEGORY_PRICE_SIGMA,
    COMPLEMENT_CATEGORIES,
    INACTIVE_SHARE,
    INACTIVE_WEIGHT,
    N_STYLES,
    NEW_PRODUCT_SHARE,
    PRICE_ELASTICITY_BY_BIN,
    REPLENISHABLE_SHARE,
    REPLENISHMENT_BASE_DAYS,
    REPLENISHMENT_DAYS_RANGE,
    STYLE_BOOST,
    ZIPF_EXPONENT,
)


@dataclass
class Catalogue:
    category: np.ndarray  # int, index into CATEGORIES
    price: np.ndarray
    style: np.ndarray
    brand: np.ndarray  # object array of names
    popularity: np.ndarray  # share within the category
    replenishment_days: np.ndarray  # float, NaN when not replenishable
    is_active: np.ndarray
    is_new: np.ndarray
    complements: np.ndarray  # (n, 3) product indices, -1 padded
    n_complements: np.ndarray
    ids: pa.Array
    # flattened per-cell CDF over each category's products; cell = (category, style, price bin)
    cell_cdf: np.ndarray
    cell_product: np.ndarray

    @property
    def n(self) -> int:
        return self.category.size

    @staticmethod
    def make(n_products: int, rng: np.random.Generator) -> Catalogue:
        # the draws follow one fixed order: each step consumes `rng` after the previous one
        category = _categories(n_products, rng)
        n = n_products
        price = _prices(category, rng)
        style = rng.integers(0, N_STYLES, n)
        popularity, brand = _popularity_and_brands(category, style, rng)
        replenishment_days = _replenishment_days(category, rng)

        status = rng.random(n)
        is_new = status < NEW_PRODUCT_SHARE
        is_active = ~((status >= NEW_PRODUCT_SHARE) & (status < NEW_PRODUCT_SHARE + INACTIVE_SHARE))

        cell_cdf, cell_product = _cell_distributions(category, price, style, popularity, is_active, is_new)
        catalogue = Catalogue(
            category=category,
            price=price,
            style=style,
            brand=brand,
            popularity=popularity,
            replenishment_days=replenishment_days,
            is_active=is_active,
            is_new=is_new,
            complements=np.full((n, 3), -1, dtype=np.int64),
            n_complements=np.zeros(n, dtype=np.int64),
            ids=format_ids("P", np.arange(1, n + 1), 6),
            cell_cdf=cell_cdf,
            cell_product=cell_product,
        )
        catalogue._attach_complements(rng)
        return catalogue

    def draw(self, category, style, price_bin, u) -> np.ndarray:
        """One product per row from the (category, style, price-bin) cell distribution."""
        cell = (np.asarray(category) * N_STYLES + np.asarray(style)) * len(
            PRICE_ELASTICITY_BY_BIN
        ) + price_bin
        pos = np.searchsorted(self.cell_cdf, cell + u * (1.0 - 1e-9), side="right")
        return self.cell_product[pos]

    def _attach_complements(self, rng: np.random.Generator) -> None:
        """1-3 complements per product, in related categories, style-coherent and popular."""
        n_comp = rng.choice([1, 2, 3], size=self.n, p=[0.4, 0.35, 0.25])
        for slot in range(3):
            has = np.flatnonzero(n_comp > slot)
            options = [COMPLEMENT_CATEGORIES[CATEGORIES[k]] for k in self.category[has]]
            pick = (rng.random(has.size) * np.array([len(o) for o in options])).astype(int)
            comp_cat = np.array(
                [CATEGORIES.index(o[i]) for o, i in zip(options, pick, strict=True)], dtype=np.int64
            )
            self.complements[has, slot] = self.draw(
                comp_cat, self.style[has], np.zeros(has.size, dtype=np.int64), rng.random(has.size)
            )
        self.n_complements = n_comp


def _categories(n_products: int, rng: np.random.Generator) -> np.ndarray:
    """Each product's category: the catalogue shares, at least 5 products each, shuffled."""
    counts = np.maximum(5, np.floor(CATEGORY_CATALOGUE_SHARE * n_products).astype(int))
    counts[0] += n_products - counts.sum()  # grocery absorbs the rounding
    return rng.permutation(np.repeat(np.arange(len(CATEGORIES)), counts))


def _prices(category: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    log_price = np.log(CATEGORY_MEDIAN_PRICE[category]) + CATEGORY_PRICE_SIGMA[
        category
    ] * rng.standard_normal(category.size)
    price = np.exp(log_price)
    # retail price points: x.99 above 5, two decimals below
    return np.where(price >= 5, np.floor(price) + 0.99, np.round(np.maximum(price, 0.49), 2))


def _popularity_and_brands(
    category: np.ndarray, style: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Zipf-like popularity inside each category, and brand names that carry style information."""
    n = category.size
    popularity = np.empty(n)
    brand = np.empty(n, dtype=object)
    for k in range(len(CATEGORIES)):
        members = np.flatnonzero(category == k)
        ranks = rng.permutation(members.size)
        weight = (ranks + 1.0) ** -ZIPF_EXPONENT
        popularity[members] = weight / weight.sum()
        # each style has a home brand per category, so brand carries style information
        n_brands = int(rng.integers(6, 15))
        names = np.array([f"{BRAND_STEMS[(3 * k + b) % len(BRAND_STEMS)]} {b + 1}" for b in range(n_brands)])
        home_brand = rng.integers(0, n_brands, N_STYLES)
        zipf_brand = rng.choice(n_brands, size=members.size, p=_zipf(n_brands, 1.0))
        brand_idx = np.where(rng.random(members.size) < 0.6, home_brand[style[members]], zipf_brand)
        brand[members] = names[brand_idx]
    return popularity, brand


def _replenishment_days(category: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The replenishment cycle of most consumables; NaN for every other product."""
    replenishment_days = np.full(category.size, np.nan)
    for name, base in REPLENISHMENT_BASE_DAYS.items():
        members = np.flatnonzero(category == CATEGORIES.index(name))
        has = rng.random(members.size) < REPLENISHABLE_SHARE
        cycle = np.round(base * rng.uniform(0.7, 1.5, members.size))
        cycle = np.clip(cycle, *REPLENISHMENT_DAYS_RANGE)
        replenishment_days[members[has]] = cycle[has]
    return replenishment_days


def _cell_distributions(
    category, price, style, popularity, is_active, is_new
) -> tuple[np.ndarray, np.ndarray]:
    """The CDF over a category's products for every (category, style, price bin) cell, laid end to
    end and shifted by the cell number (so one search finds a product), and the product of each
    position."""
    # base sampling weight: popularity, fewer sales for discontinued ones, none for new ones
    base_weight = popularity * np.where(is_active, 1.0, INACTIVE_WEIGHT) * ~is_new
    relative_price = price / CATEGORY_MEDIAN_PRICE[category]
    cdf_parts, product_parts = [], []
    for k in range(len(CATEGORIES)):
        members = np.flatnonzero(category == k)
        for s in range(N_STYLES):
            style_weight = base_weight[members] * np.exp(STYLE_BOOST * (style[members] == s))
            for b, elasticity in enumerate(PRICE_ELASTICITY_BY_BIN):
                w = style_weight * relative_price[members] ** -elasticity
                if w.sum() <= 0:
                    w = np.ones(members.size)
                cdf = np.cumsum(w) / w.sum()
                cdf[-1] = 1.0
                cell = (k * N_STYLES + s) * len(PRICE_ELASTICITY_BY_BIN) + b
                cdf_parts.append(cdf + cell)
                product_parts.append(members)
    return np.concatenate(cdf_parts), np.concatenate(product_parts)


def _zipf(n: int, exponent: float) -> np.ndarray:
    w = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    return w / w.sum()
