"""The console checks a name before it sends it with a copy of the server's rule (JavaScript
cannot import it): the copy is the rule."""

from __future__ import annotations

import os
import re

from router.config import NAME_PATTERN
from tests.processes import ROOT


def test_the_consoles_name_pattern_is_the_servers() -> None:
    with open(os.path.join(ROOT, "router", "admin", "ui", "js", "dialogs.js")) as f:
        (copy,) = re.findall(r"^const NAME_RE = /(.*)/;", f.read(), re.M)
    assert copy == NAME_PATTERN
