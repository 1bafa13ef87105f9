from .semask_swin import SWIN_SIZES, D2SeMaskSwinTransformer, default_sem_windowed
