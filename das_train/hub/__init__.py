"""Publishing trained interventions: a folder anyone can load, and its round trip through the Hub.

The publishing layer sits above the hook core (it imports :mod:`das_train.core`, never the
other way round; ``IntervenableModel.save_pretrained`` and friends import it when called).
One module per job:

- :mod:`~das_train.hub.card`: the ``README.md`` model card (:class:`ModelCard`);
- :mod:`~das_train.hub.save`: :func:`save_pretrained` writes the intervention files
  (``config.json`` and ``interventions.safetensors``, see :mod:`das_train.core.serialization`)
  plus the card;
- :mod:`~das_train.hub.push`: :func:`push_to_hub` uploads a saved folder, or an intervenable
  saved on the spot;
- :mod:`~das_train.hub.load`: :func:`from_pretrained` loads one back from a local folder or a
  Hub repo, on any machine;
- :mod:`~das_train.hub.runs`: :func:`publish_run` publishes a finished sweep's run directory as
  one repo;
- :mod:`~das_train.hub.errors`: why a publish or a download failed (``OSError`` subclasses that
  say which reason it was and where the local files are kept).
"""

from das_train.core.serialization import CONFIG_NAME, WEIGHTS_NAME
from das_train.hub.card import CARD_NAME, DEFAULT_TAGS, HEATMAP_NAME, ModelCard
from das_train.hub.errors import DownloadFailure, HubDownloadError, HubPublishError, PublishFailure
from das_train.hub.load import from_pretrained
from das_train.hub.push import DEFAULT_COMMIT_MESSAGE, HIDDEN_PATTERNS, push_to_hub
from das_train.hub.runs import RUN_FILES, RUN_INFO_NAME, publish_run, run_card
from das_train.hub.save import save_pretrained

__all__ = [
    "CARD_NAME",
    "CONFIG_NAME",
    "DEFAULT_COMMIT_MESSAGE",
    "DEFAULT_TAGS",
    "DownloadFailure",
    "HEATMAP_NAME",
    "HIDDEN_PATTERNS",
    "HubDownloadError",
    "HubPublishError",
    "ModelCard",
    "PublishFailure",
    "RUN_FILES",
    "RUN_INFO_NAME",
    "WEIGHTS_NAME",
    "from_pretrained",
    "publish_run",
    "push_to_hub",
    "run_card",
    "save_pretrained",
]
