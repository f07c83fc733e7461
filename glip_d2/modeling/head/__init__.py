from .deform_conv import (  # noqa: F401  (re-exports)
    DEFORM_CONV_IMPLS,
    deform_conv2d_sparse,
    get_deform_conv,
)
from .dyhead import (  # noqa: F401  (re-exports)
    Conv3x3Norm,
    DyConv,
    DyReLU,
    ModulatedDeformConv,
    build_vldyhead_tower,
)
