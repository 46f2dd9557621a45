"""Complex features: segmenters, masks to a partition, relevance-guided selection and a cache.

```python
from ctc_plugin.features import SuperpixelSegmenter, GridSegmenter, to_partition, select_features
from ctc_plugin.adapters.sam import SAMSegmenter
```

Every segmenter is a callable ``segmenter(images) -> LongTensor (N, 1, H, W)`` usable as Captum's
``feature_mask``; ``segmenter.segment(images)`` adds per-feature metadata.
"""

from ctc_plugin.features.base import (
    FeatureTable,
    ImageNormalisation,
    Segmentation,
    Segmenter,
    SegmenterProtocol,
    ValueRangeError,
    ValueRangeWarning,
    feature_table,
)
from ctc_plugin.features.cache import (
    CorruptCacheEntryWarning,
    MaskCache,
    MaskCacheError,
    default_cache_dir,
)
from ctc_plugin.features.partition import (
    as_feature_mask,
    mask_stack,
    segment_means,
    to_partition,
)
from ctc_plugin.features.relevance import lrp_alpha1beta0, relevance_heatmap, zennit_relevance
from ctc_plugin.features.selection import FeatureSelection, SelectionConfig, select_features
from ctc_plugin.features.superpixel import GridSegmenter, SuperpixelSegmenter

__all__ = [
    "CorruptCacheEntryWarning",
    "FeatureSelection",
    "FeatureTable",
    "GridSegmenter",
    "ImageNormalisation",
    "MaskCache",
    "MaskCacheError",
    "SelectionConfig",
    "Segmentation",
    "Segmenter",
    "SegmenterProtocol",
    "SuperpixelSegmenter",
    "ValueRangeError",
    "ValueRangeWarning",
    "as_feature_mask",
    "default_cache_dir",
    "feature_table",
    "lrp_alpha1beta0",
    "mask_stack",
    "relevance_heatmap",
    "segment_means",
    "select_features",
    "to_partition",
    "zennit_relevance",
]
