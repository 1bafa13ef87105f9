from .semask_swin import SWIN_SIZES, D2SeMaskSwinTransformer, FeatureDict, default_sem_windowed
