"""Settings plus the view catalog, found by one rule (the CLI, the Airflow steps, the demo;
a submitted streaming driver reads the settings saved at submit time, then its views here).

- Settings: an explicit file, else ``$LAMINA_CONFIG``, else ``./conf/lamina.toml``, else
  (only where a ``root`` is given: Airflow tasks, whose working directory is Airflow's) the
  ``conf/lamina.toml`` of that project root; ``LAMINA_*`` environment variables override.
- Views: ``[pipeline] views_file``; a relative path is relative to ``root`` when one is
  given, else to the working directory.
"""

from __future__ import annotations

from pathlib import Path

from lamina.settings import Settings, default_config_path, load_settings
from lamina.views import ViewCatalog, load_views


def load_catalog(settings: Settings, root: Path | None = None) -> ViewCatalog:
    """The views of ``settings.pipeline.views_file`` (relative paths against ``root``)."""
    path = settings.pipeline.views_file
    if root is not None and not path.is_absolute():
        path = root / path
    return load_views(path)


def config_path(root: Path | None = None) -> Path | None:
    """The settings file the rule in the module docstring picks when none is given
    (``None``: defaults and ``LAMINA_*`` variables only)."""
    found = default_config_path()
    if found is None and root is not None:
        return root / "conf" / "lamina.toml"
    return found


def load_context(
    config: Path | str | None = None, *, root: Path | None = None
) -> tuple[Settings, ViewCatalog]:
    """Settings and views by the rule in the module docstring."""
    settings = load_settings(config if config is not None else config_path(root))
    return settings, load_catalog(settings, root)
