"""
Config keys read by semask-d2. Call :func:`add_semask_config` on ``detectron2.config.get_cfg()``
before merging a SeMask YAML file. Every ``MODEL.SWIN.*`` key of the official SeMask configs is
here with the same meaning and type, so official files merge; keys the official code lacks are
marked "new".
"""

from detectron2.config import CfgNode as CN
from detectron2.projects.deeplab import add_deeplab_config

__all__ = ["add_semask_config"]


def add_semask_config(cfg: CN) -> None:
    """
    Add the SeMask keys to `cfg` in place, with their defaults. Also adds DeepLab's keys
    (`SOLVER.POLY_LR_POWER`, `INPUT.CROP.SINGLE_CATEGORY_MAX_AREA`, ...), which we reuse.
    """
    add_deeplab_config(cfg)
    _add_weights_config(cfg)
    _add_swin_config(cfg)
    _add_prior_config(cfg)
    _add_fpn_head_config(cfg)
    _add_mask_former_config(cfg)
    _add_input_config(cfg)
    _add_solver_config(cfg)
    _add_test_config(cfg)


def _add_weights_config(cfg: CN) -> None:
    # New. Load MODEL.WEIGHTS even when it does not fit the model (missing, unexpected or
    # wrongly shaped keys are skipped with detectron2's warnings), e.g. to fine-tune from another
    # dataset's classes. False: such a checkpoint stops the run with one line; only a backbone
    # checkpoint may lack the head, the semantic layers and the output norms.
    cfg.MODEL.WEIGHTS_PARTIAL = False


def _add_swin_config(cfg: CN) -> None:
    cfg.MODEL.SWIN = CN()
    # Image size (pixels) of the ImageNet pretraining; only sizes the absolute position
    # embedding (APE). 224 for Swin-T/S, 384 for Swin-B/L.
    cfg.MODEL.SWIN.PRETRAIN_IMG_SIZE = 224
    # Side (pixels) of the non-overlapping patches of the patch embedding.
    cfg.MODEL.SWIN.PATCH_SIZE = 4
    # Channels of stage 0; stage i has EMBED_DIM * 2**i. T/S 96, B 128, L 192.
    cfg.MODEL.SWIN.EMBED_DIM = 96
    # Swin blocks per stage. T [2, 2, 6, 2]; S/B/L [2, 2, 18, 2].
    cfg.MODEL.SWIN.DEPTHS = [2, 2, 6, 2]
    # Attention heads per stage. T/S [3, 6, 12, 24], B [4, 8, 16, 32], L [6, 12, 24, 48].
    cfg.MODEL.SWIN.NUM_HEADS = [3, 6, 12, 24]
    # Window side (tokens) of the Swin blocks; shifted blocks shift by WINDOW_SIZE // 2.
    cfg.MODEL.SWIN.WINDOW_SIZE = 7
    # Hidden width of the block MLPs as a multiple of the channels.
    cfg.MODEL.SWIN.MLP_RATIO = 4.0
    # Bias in the qkv projection of window attention.
    cfg.MODEL.SWIN.QKV_BIAS = True
    # Attention scale; None means head_dim ** -0.5.
    cfg.MODEL.SWIN.QK_SCALE = None
    # Dropout after the patch embedding, MLPs and attention projections.
    cfg.MODEL.SWIN.DROP_RATE = 0.0
    # Dropout on the window attention weights.
    cfg.MODEL.SWIN.ATTN_DROP_RATE = 0.0
    # Stochastic depth: rates rise linearly from 0 to this value over all blocks.
    cfg.MODEL.SWIN.DROP_PATH_RATE = 0.3
    # Add a learned absolute position embedding after the patch embedding.
    cfg.MODEL.SWIN.APE = False
    # LayerNorm after the patch embedding.
    cfg.MODEL.SWIN.PATCH_NORM = True
    # Features returned, among res2..res5 (strides 4, 8, 16, 32). Prior maps res2_prior..
    # res5_prior of every stage are returned whenever NUM_SEM_BLOCKS > 0.
    cfg.MODEL.SWIN.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    # Gradient checkpointing of the Swin blocks during training (less memory, ~30% slower).
    cfg.MODEL.SWIN.USE_CHECKPOINT = False
    # New. Meta-architectures that pad to the backbone's size divisibility (SemanticSegmentor)
    # pad images to a multiple of this (pixels). 0: no padding, Swin pads inside each stage as
    # mmseg does at test time (SeMask-FPN recipes; sizes that are multiples of 32 are unchanged).
    cfg.MODEL.SWIN.SIZE_DIVISIBILITY = 32
    # Window side (tokens) of the windowed semantic layers (official: 7 for T/S, 12 for B/L;
    # the official Cityscapes SeMask-L config keeps 7).
    cfg.MODEL.SWIN.SEM_WINDOW_SIZE = 7
    # SemanticAttention modules per semantic layer (official: 1). 0 removes the semantic
    # layers: a plain Swin with the same feature keys and no prior maps.
    cfg.MODEL.SWIN.NUM_SEM_BLOCKS = 1
    # New. Classes of the semantic layers' prior maps (mlp_cls_q/k rows); 0 (default) means
    # MODEL.SEM_SEG_HEAD.NUM_CLASSES. The committed mmseg COCO-Stuff-10k SeMask-FPN configs keep
    # the backbone at 150 while the head has 171 (tools/convert_semask_fpn_mmseg.py prints it).
    cfg.MODEL.SWIN.NUM_PRIOR_CLASSES = 0
    # New. Per stage, True for windowed and False for global semantic attention, e.g.
    # [true, true, false, false] for the mmseg SeMask-FPN T/S/L rule. Empty: the official rule
    # of the head family (semask_d2/modeling/head_family.py: MaskFormer W,W,W,G; Mask2Former
    # W,W,W,G with 150 classes, else all W; FaPN/MSFaPN W,W,G,G); other heads: Mask2Former's.
    cfg.MODEL.SWIN.SEM_WINDOWED = []
    # New. Dropout after mlp_res in SemanticAttention (hard-coded 0.1 in the official code).
    cfg.MODEL.SWIN.SEM_DROPOUT = 0.1
    # New. Initialization of the semantic layers:
    # "mmseg" (default): every Linear trunc_normal(std 0.02) with zero bias, gamma 0; the
    #   attention branch trains (what the mmseg SeMask-FPN ends up with).
    # "official": as the detectron2 SeMask code (kaiming-normal, then mlp_res and gamma 0):
    #   the branch receives exactly zero gradient and stays off. For reproducing official runs.
    cfg.MODEL.SWIN.SEM_INIT = "mmseg"


def _add_prior_config(cfg: CN) -> None:
    if "MASK_FORMER" not in cfg.MODEL:
        cfg.MODEL.MASK_FORMER = CN()
    # Weight of the semantic prior loss `loss_cate` (official name and value), unless
    # MODEL.SEMASK.PRIOR_LOSS_WEIGHT is set. Read for every meta-architecture, FPN included.
    cfg.MODEL.MASK_FORMER.CATE_WEIGHT = 0.4
    cfg.MODEL.SEMASK = CN()
    # New. Weight of `loss_cate`; None (default) means MODEL.MASK_FORMER.CATE_WEIGHT, where the
    # official code reads it. When set, this value wins.
    cfg.MODEL.SEMASK.PRIOR_LOSS_WEIGHT = None
    # New. How the summed stride-4 prior map meets the labels:
    # "detectron2": bilinear with align_corners=True, up to the padded input size (official
    #   SeMask-Mask2Former); labels smaller than that are padded with the ignore value.
    # "mmseg": bilinear with align_corners=False, resized to the label size (SeMask-FPN).
    cfg.MODEL.SEMASK.PRIOR_CONVENTION = "detectron2"
    # New. How `loss_cate` is averaged: "detectron2" over the labelled pixels; "mmseg" over all
    # label pixels, ignored ones included in the denominator (mmseg v0.11 CrossEntropyLoss; the
    # SeMask-FPN recipes).
    cfg.MODEL.SEMASK.PRIOR_LOSS_AVERAGING = "detectron2"


def _add_fpn_head_config(cfg: CN) -> None:
    # New. Dropout2d probability (0 to 1) on the summed features right before the 1x1
    # classifier of `SeMaskFPNHead` (mmseg SeMask-FPN `dropout_ratio` 0.1; 0 disables it).
    cfg.MODEL.SEM_SEG_HEAD.DROPOUT = 0.1
    # New. mmseg OHEMPixelSampler on loss_sem_seg of `SeMaskFPNHead` (official SeMask-FPN:
    # SeMask-L ADE20K and every COCO-Stuff-10k size); loss_cate never uses it.
    cfg.MODEL.SEM_SEG_HEAD.OHEM_ENABLED = False
    # New. OHEM probability threshold (0 to 1): keep labelled pixels whose softmax probability of
    # the target class is below max(OHEM_THRESH, the probability ranked OHEM_MIN_KEPT x batch
    # from the lowest). None (mmseg default, official recipes): keep the OHEM_MIN_KEPT x batch
    # pixels with the highest cross-entropy.
    cfg.MODEL.SEM_SEG_HEAD.OHEM_THRESH = None
    # New. OHEM pixels kept at least per image (mmseg `min_kept`, official 100000).
    cfg.MODEL.SEM_SEG_HEAD.OHEM_MIN_KEPT = 100000
    # New. Averaging of loss_sem_seg of `SeMaskFPNHead`: "detectron2" (mean over labelled pixels,
    # those kept by OHEM when enabled) or "mmseg" (mmseg CrossEntropyLoss: mean over all B*H*W
    # label pixels, ignored and unkept ones counting 0 in the sum).
    cfg.MODEL.SEM_SEG_HEAD.LOSS_AVERAGING = "detectron2"
    # New. How `SeMaskFPNHead` brings its stride-4 logits to the image: "stride" (detectron2:
    # x COMMON_STRIDE, bilinear) or "input" (mmseg: bilinear resize to the network input size
    # reported by the backbone, then the loss labels' size in training). They differ only on
    # inputs that are not multiples of COMMON_STRIDE.
    cfg.MODEL.SEM_SEG_HEAD.LOGITS_RESIZE = "stride"


def _add_mask_former_config(cfg: CN) -> None:
    # Keys of the official SeMask-Mask2Former configs (same names, meanings and types). Defaults
    # are the official `add_maskformer2_config` defaults, so that an official file omitting a key
    # builds the official model; our YAMLs state the Mask2Former recipe values explicitly.
    mf = cfg.MODEL.MASK_FORMER
    # Auxiliary losses on the predictions before the first and after every decoder layer.
    mf.DEEP_SUPERVISION = True
    # Class weight of "no object" in loss_ce.
    mf.NO_OBJECT_WEIGHT = 0.1
    # Loss weights of loss_ce, loss_mask (point-sampled sigmoid BCE) and loss_dice; they are
    # also the cost weights of the Hungarian matcher. Mask2Former recipe: 2.0 / 5.0 / 5.0.
    mf.CLASS_WEIGHT = 1.0
    # (see CLASS_WEIGHT)
    mf.MASK_WEIGHT = 20.0
    # (see CLASS_WEIGHT)
    mf.DICE_WEIGHT = 1.0
    # Attention heads of the masked transformer decoder and, as in the official code, of the
    # deformable attention of MSDeformAttnPixelDecoder.
    mf.NHEADS = 8
    # Dropout of the deformable encoder layers (the masked decoder uses none, as official).
    # Mask2Former recipe: 0.0.
    mf.DROPOUT = 0.1
    # FFN width of the masked transformer decoder layers.
    mf.DIM_FEEDFORWARD = 2048
    # Unused by the multi-scale decoder (a MaskFormer-v1 key kept for official files).
    mf.ENC_LAYERS = 0
    # Predictions of the transformer decoder: one before its first layer and one after each of
    # its DEC_LAYERS - 1 layers (official off-by-one: 10 means 9 layers). Mask2Former recipe: 10.
    mf.DEC_LAYERS = 6
    # Pre-norm instead of post-norm transformer decoder layers.
    mf.PRE_NORM = False
    # Channels of the queries and of the decoder.
    mf.HIDDEN_DIM = 256
    # Number of queries.
    mf.NUM_OBJECT_QUERIES = 100
    # Which features the transformer decoder reads; "multi_scale_pixel_decoder" (Mask2Former
    # recipe): the pixel decoder's 1/32, 1/16, 1/8 maps.
    mf.TRANSFORMER_IN_FEATURE = "res5"
    # Project decoder inputs with a 1x1 conv even when their channels equal HIDDEN_DIM.
    mf.ENFORCE_INPUT_PROJ = False
    # Pad images to a multiple of this (pixels); -1: ask the backbone (32).
    mf.SIZE_DIVISIBILITY = 32
    # Registry name of the transformer decoder.
    mf.TRANSFORMER_DECODER_NAME = "MultiScaleMaskedTransformerDecoder"
    # Points sampled per mask for the matcher costs and the mask losses (112 * 112).
    mf.TRAIN_NUM_POINTS = 112 * 112
    # Candidate points drawn per kept point for importance sampling.
    mf.OVERSAMPLE_RATIO = 3.0
    # Fraction of the points taken among the most uncertain candidates; the rest uniform.
    mf.IMPORTANCE_SAMPLE_RATIO = 0.75
    mf.TEST = CN()
    # Inference outputs: semantic (`sem_seg`), instance (`instances`), panoptic (`panoptic_seg`).
    mf.TEST.SEMANTIC_ON = True
    # (see SEMANTIC_ON)
    mf.TEST.INSTANCE_ON = False
    # (see SEMANTIC_ON)
    mf.TEST.PANOPTIC_ON = False
    # Panoptic: keep queries whose class score exceeds this (Mask2Former recipe: 0.8).
    mf.TEST.OBJECT_MASK_THRESHOLD = 0.0
    # Panoptic: drop segments keeping less than this fraction of their mask after overlaps
    # (Mask2Former recipe: 0.8).
    mf.TEST.OVERLAP_THRESHOLD = 0.0
    # Crop and resize the mask logits to the output size before semantic inference.
    mf.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE = False

    head = cfg.MODEL.SEM_SEG_HEAD
    # Channels of the per-pixel mask embeddings.
    head.MASK_DIM = 256
    # Registry name of the pixel decoder (Mask2Former recipe: "MSDeformAttnPixelDecoder").
    head.PIXEL_DECODER_NAME = "BasePixelDecoder"
    # Layers of the deformable-attention encoder of the pixel decoder (Mask2Former recipe: 6).
    head.TRANSFORMER_ENC_LAYERS = 0
    # Backbone features refined by the deformable encoder (coarse levels).
    head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES = ["res3", "res4", "res5"]
    # Not read, as in the official code: MSDeformAttnPixelDecoder samples 4 points per head and
    # level (hard-coded there). Accepted so that official files merge; a value other than 4
    # draws a warning.
    head.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS = 4
    # Not read, as in the official code: the deformable attention has MODEL.MASK_FORMER.NHEADS
    # heads. Accepted so that official files merge; a value other than NHEADS draws a warning.
    head.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS = 8
    # New. FFN width of the deformable encoder layers; None (default): 1024, hard-coded in the
    # official code (official files lack this key, so they always get 1024).
    head.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD = None


def _add_input_config(cfg: CN) -> None:
    # Training mapper, by name in semask_d2's dataset-mapper registry. "mask_former_semantic":
    # resize, category-area-constrained crop, optional SSD colour jitter, flip, padding; emits
    # `sem_seg` and per-class `instances`, so it feeds both SemanticSegmentor and MaskFormer.
    # "mask_former_panoptic" / "mask_former_instance": the same crops, one target per segment
    # or instance; "coco_panoptic_lsj" / "coco_instance_lsj": large-scale jitter
    # (INPUT.IMAGE_SIZE, MIN_SCALE, MAX_SCALE). All of them also emit `sem_seg` for the prior
    # loss (the dataset's semantic file, or derived from the segments).
    cfg.INPUT.DATASET_MAPPER_NAME = "mask_former_semantic"
    # Photometric distortion of SSD (brightness, contrast, saturation, hue) in training.
    cfg.INPUT.COLOR_AUG_SSD = False
    # Pad training images (value 128 before normalisation) and labels (ignore value) to exactly
    # this square size (pixels) after cropping; -1: no padding in the mapper.
    cfg.INPUT.SIZE_DIVISIBILITY = -1
    # Large-scale-jitter mappers (official Mask2Former keys, kept so official files merge):
    # output side (pixels) of the square crop.
    cfg.INPUT.IMAGE_SIZE = 1024
    # Smallest and largest random scale factor of large-scale jitter.
    cfg.INPUT.MIN_SCALE = 0.1
    # (see MIN_SCALE)
    cfg.INPUT.MAX_SCALE = 2.0
    # New. Test-time resize (semask_d2.data.transforms): "detectron2" (ResizeShortestEdge, PIL
    # bilinear) or "mmseg" (keep-ratio to img_scale (MAX_SIZE_TEST, MIN_SIZE_TEST), cv2
    # bilinear; SeMask-FPN recipes).
    cfg.INPUT.TEST_RESIZE = "detectron2"


def _add_solver_config(cfg: CN) -> None:
    # Optimizer: "ADAMW" or "SGD" (momentum SOLVER.MOMENTUM, nesterov SOLVER.NESTEROV).
    # SOLVER.CLIP_GRADIENTS.CLIP_TYPE also accepts "full_model": one L2 norm over all
    # parameters clipped to CLIP_VALUE (official SeMask/Mask2Former recipe).
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    # Learning-rate factor of the backbone parameters (semantic layers included).
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    # Weight decay of nn.Embedding weights (query and level embeddings).
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0


def _add_test_config(cfg: CN) -> None:
    # New. Evaluate Cityscapes semantic datasets with the official cityscapesscripts evaluator
    # on labelIds (needs `*_gtFine_labelIds.png`, single machine) instead of SemSegEvaluator
    # on trainIds (same class IoU definition).
    cfg.TEST.OFFICIAL_CITYSCAPES_EVAL = False
    # New. Test-time augmentation (TEST.AUG.*): apply softmax over classes to each view's
    # scores before averaging. True for models returning logits (SemanticSegmentor, SeMask-FPN);
    # False for models returning probabilities (MaskFormer/Mask2Former semantic inference).
    cfg.TEST.AUG.SOFTMAX = True
    # New. Log a per-class IoU/ACC table after each semantic evaluation; the summary CSV lines
    # are always printed.
    cfg.TEST.PRINT_PER_CLASS = False
