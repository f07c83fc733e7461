from .dyhead import (  # noqa: F401  (re-exports)
    Conv3x3Norm,
    DyConv,
    DyReLU,
    ModulatedDeformConv,
    build_vldyhead_tower,
)
