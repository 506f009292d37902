"""The default plugin: registers mtlframe's built-in components through the public hooks.

Hook implementations only; factories are lazy ``"module:Attr"`` strings so listing components
imports nothing heavy.
"""
from __future__ import annotations

from mtlframe.hookspecs import ComponentSpec as C
from mtlframe.hookspecs import hookimpl


@hookimpl
def mtlframe_datasets():
    return [
        C("clothing-reviews", "mtlframe.datasets.clothing_reviews:ClothingReviews",
          "Women's E-Commerce Clothing Reviews (bundled, CC0): rating, recommended, helpful"),
        C("adult", "mtlframe.datasets.adult:Adult",
          "UCI Adult census (bundled, CC BY 4.0): income > 50K, never married"),
        C("movielens-100k", "mtlframe.datasets.movielens:MovieLens100K",
          "MovieLens 100K ratings (local folder or download): rating, like"),
        C("csv", "mtlframe.datasets.tabular:CsvDataset", "your own CSV file"),
        C("parquet", "mtlframe.datasets.tabular:ParquetDataset", "your own Parquet file"),
        C("synthetic", "mtlframe.datasets.synthetic:Synthetic",
          "MMoE paper's synthetic tasks with controllable correlation"),
    ]


@hookimpl
def mtlframe_encoders():
    return [
        C("embedding", "mtlframe.encoders.embedding:EmbeddingEncoder",
          "categorical features -> learned embeddings (one fused table)"),
        C("numeric", "mtlframe.encoders.numeric:NumericEncoder", "standardized numeric features"),
        C("bag-of-words", "mtlframe.encoders.bag_of_words:BagOfWordsEncoder",
          "hashed word n-grams of text -> mean-pooled EmbeddingBag"),
        C("sequence-pool", "mtlframe.encoders.sequence_pool:SequencePoolEncoder",
          "behaviour sequence -> masked mean / sum / max of its id embeddings (YouTube-DNN, RecSys 2016)"),
        C("target-attention", "mtlframe.encoders.target_attention:TargetAttentionEncoder",
          "behaviour sequence weighted by DIN's activation unit against the target item (Zhou et al., KDD 2018)"),
        C("sequence-transformer", "mtlframe.encoders.sequence_transformer:SequenceTransformerEncoder",
          "self-attention over behaviour sequence + target item, BST (Chen et al., DLP-KDD 2019)"),
    ]


@hookimpl
def mtlframe_backbones():
    return [
        C("shared-bottom", "mtlframe.backbones.shared_bottom:SharedBottom", "one shared MLP (hard sharing)"),
        C("mmoe", "mtlframe.backbones.mmoe:MMoE", "multi-gate mixture-of-experts (Ma et al., KDD 2018)"),
        C("omoe", "mtlframe.backbones.omoe:OMoE", "one-gate mixture-of-experts (Ma et al., KDD 2018 baseline)"),
        C("cgc", "mtlframe.backbones.cgc:CGC", "customized gate control: task + shared experts (Tang et al., RecSys 2020)"),
        C("ple", "mtlframe.backbones.ple:PLE", "progressive layered extraction (Tang et al., RecSys 2020)"),
        C("cross-stitch", "mtlframe.backbones.cross_stitch:CrossStitch",
          "per-task columns mixed by cross-stitch units (Misra et al., CVPR 2016)"),
        C("dselect-k", "mtlframe.backbones.dselect_k:DSelectK",
          "experts with differentiable top-k gates (Hazimeh et al., NeurIPS 2021)"),
        C("single-task", "mtlframe.backbones.single_task:SingleTask", "one independent MLP per task (no sharing)"),
        C("esmm", "mtlframe.backbones.esmm:ESMM",
          "entire-space funnel, pCTCVR = pCTR x pCVR (Ma et al., SIGIR 2018; couples outputs)"),
        C("escm2", "mtlframe.backbones.escm2:ESCM2",
          "ESMM + IPS/DR counterfactual CVR risk (Wang et al., SIGIR 2022; couples outputs)"),
        C("aitm", "mtlframe.backbones.aitm:AITM",
          "adaptive information transfer + calibrator (Xi et al., KDD 2021; auxiliary loss)"),
        C("stem", "mtlframe.backbones.stem:STEM",
          "shared/task-specific embeddings (embedding's task_specific tables), all-forward gates "
          "(Su et al., AAAI 2024)"),
    ]


@hookimpl
def mtlframe_towers():
    return [C("mlp", "mtlframe.towers.mlp:MLPTower", "MLP task tower")]


@hookimpl
def mtlframe_combiners():
    return [
        C("static", "mtlframe.combiners.static:StaticCombiner", "L = sum_i w_i L_i"),
        C("uncertainty", "mtlframe.combiners.uncertainty:UncertaintyWeighting",
          "learned homoscedastic-uncertainty weights (Kendall et al., CVPR 2018)"),
        C("dwa", "mtlframe.combiners.dwa:DWA", "dynamic weight average (Liu et al., CVPR 2019)"),
        C("rlw", "mtlframe.combiners.rlw:RandomLossWeighting",
          "random loss weighting (Lin et al., TMLR 2022)"),
        C("famo", "mtlframe.combiners.famo:FAMO", "fast adaptive multitask optimization "
          "(Liu et al., NeurIPS 2023)"),
        C("db-mtl", "mtlframe.combiners.db_mtl:DBMTL",
          "log losses + gradient-magnitude balancing (Lin et al., 2023); gradient-level"),
        C("gradnorm", "mtlframe.combiners.gradnorm:GradNorm",
          "gradient normalization (Chen et al., ICML 2018); gradient-level"),
        C("pcgrad", "mtlframe.combiners.pcgrad:PCGrad",
          "projecting conflicting gradients (Yu et al., NeurIPS 2020); gradient-level"),
        C("mgda", "mtlframe.combiners.mgda:MGDA",
          "min-norm multiple-gradient descent, MGDA-UB option (Sener & Koltun, NeurIPS 2018); "
          "gradient-level"),
        C("cagrad", "mtlframe.combiners.cagrad:CAGrad",
          "conflict-averse gradient descent (Liu et al., NeurIPS 2021); gradient-level"),
        C("nash-mtl", "mtlframe.combiners.nash_mtl:NashMTL",
          "Nash bargaining weights (Navon et al., ICML 2022); gradient-level"),
        C("imtl", "mtlframe.combiners.imtl:IMTL",
          "impartial MTL, IMTL-G (+ IMTL-L) (Liu et al., ICLR 2021); gradient-level"),
    ]


@hookimpl
def mtlframe_samplers():
    return [
        C("none", "mtlframe.samplers.none:NoSampler", "train on the rows as they are"),
        C("uniform-negatives", "mtlframe.samplers.uniform_negatives:UniformNegatives",
          "pair positive rows with uniformly drawn items as negatives for a binary or retrieval task"),
        C("popularity-negatives", "mtlframe.samplers.popularity_negatives:PopularityNegatives",
          "negatives drawn with probability proportional to training count ** alpha (word2vec)"),
        C("in-batch", "mtlframe.samplers.in_batch:InBatch",
          "model-side: the batch's other items as negatives, logQ-corrected (Yi et al., RecSys 2019)"),
        C("mixed", "mtlframe.samplers.mixed:Mixed",
          "model-side: in-batch plus sampled catalogue items, logQ-corrected (Yang et al., WWW 2020)"),
    ]


@hookimpl
def mtlframe_metrics():
    return [
        C("auc", "mtlframe.metrics.standard:auc", "ROC AUC (binary)"),
        C("logloss", "mtlframe.metrics.standard:logloss", "log loss (binary, multiclass)"),
        C("accuracy", "mtlframe.metrics.standard:accuracy", "accuracy (binary, multiclass)"),
        C("rmse", "mtlframe.metrics.standard:rmse", "root mean squared error (regression)"),
        C("mae", "mtlframe.metrics.standard:mae", "mean absolute error (regression)"),
        C("gauc", "mtlframe.metrics.grouped:gauc", "group AUC, per user (binary; needs metrics_group)"),
        C("ndcg", "mtlframe.metrics.grouped:ndcg", "NDCG@K per user, written ndcg@K (binary, regression; "
                                                   "needs metrics_group)"),
        C("recall", "mtlframe.metrics.grouped:recall", "Recall@K per user, written recall@K (binary; needs "
                                                       "metrics_group)"),
        C("hitrate", "mtlframe.metrics.grouped:hitrate", "HitRate@K per user, written hitrate@K (binary; "
                                                         "needs metrics_group)"),
    ]


@hookimpl
def mtlframe_schedulers():
    return [
        C("cosine", "mtlframe.schedulers.cosine:Cosine",
          "cosine annealing to min_lr_ratio, optional linear warm-up (Loshchilov & Hutter, ICLR 2017)"),
        C("linear-warmup", "mtlframe.schedulers.linear_warmup:LinearWarmup",
          "linear warm-up to the base rate, then constant (Goyal et al., 2017)"),
        C("step", "mtlframe.schedulers.step:StepDecay", "rate x gamma every step_size epochs (or steps)"),
        C("plateau", "mtlframe.schedulers.plateau:Plateau",
          "rate x factor when the checkpoint monitor stops improving (per validation)"),
        C("onecycle", "mtlframe.schedulers.onecycle:OneCycle",
          "one-cycle policy: up to the base rate, then annealed far below (Smith & Topin, 2019)"),
    ]
