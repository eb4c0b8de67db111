"""Write slicer510_widget_classes.json: the widget classes a .ui file can use in Slicer 5.10.

Not run by the tests (they read the JSON); run it again to refresh the list from the sources:

    python Testing/slicer/make_widget_class_list.py --slicer SLICER_GIT --ctk CTK_GIT --qttools QTTOOLS_GIT

where each argument is a git directory (a clone or a bare mirror) of github.com/Slicer/Slicer,
github.com/commontk/CTK and github.com/qt/qttools. The classes are read from:

* Qt: the standard widgets and layouts of Qt Designer's widget box
  (src/designer/src/components/widgetbox/widgetbox.xml, branch 5.15: Slicer 5.10 builds with Qt 5.15);
* CTK: the Designer plugins (``Plugins/ctk*Plugin.cpp``) at the CTK commit Slicer v5.10.0 pins in
  SuperBuild/External_CTK.cmake;
* Slicer: the Designer plugins (``DesignerPlugins/*Plugin.cxx``) of tag v5.10.0.

A class counts when its plugin's ``createWidget`` instantiates it (``new <class>(``).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
from pathlib import Path

SLICER_TAG = "v5.10.0"
QT_BRANCH = "5.15"


def git(repo: str, *args: str) -> str:
    return subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True, check=True).stdout


def plugin_classes(repo: str, rev: str, pattern: str, prefix: str) -> list[str]:
    files = [f for f in git(repo, "ls-tree", "-r", "--name-only", rev).splitlines() if re.search(pattern, f)]
    out = set()
    for f in files:
        m = re.search(r"new (" + prefix + r"[A-Za-z0-9_]*)\(", git(repo, "show", f"{rev}:{f}"))
        if m:
            out.add(m.group(1))
    return sorted(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slicer", required=True)
    ap.add_argument("--ctk", required=True)
    ap.add_argument("--qttools", required=True)
    a = ap.parse_args()
    slicer_commit = git(a.slicer, "rev-parse", SLICER_TAG).strip()
    ext = git(a.slicer, "show", f"{SLICER_TAG}:SuperBuild/External_CTK.cmake")
    ctk_commit = re.search(r'Slicer_\$\{proj\}_GIT_TAG\s*\n\s*"([0-9a-f]{40})"', ext).group(1)
    qt_xml = git(a.qttools, "show", f"{QT_BRANCH}:src/designer/src/components/widgetbox/widgetbox.xml")
    qt = sorted({c for c in re.findall(r'class="(Q[A-Za-z]+)"', qt_xml)} | {"QWidget"})
    data = {
        "about": "Widget and layout classes a Qt Designer .ui file can instantiate in 3D Slicer 5.10 "
                 "(written by Testing/slicer/make_widget_class_list.py)",
        "sources": {
            "qt": f"github.com/qt/qttools {QT_BRANCH}:src/designer/src/components/widgetbox/widgetbox.xml "
                  f"(commit {git(a.qttools, 'rev-parse', QT_BRANCH).strip()})",
            "ctk": f"github.com/commontk/CTK {ctk_commit}: */Plugins/ctk*Plugin.cpp (the commit Slicer "
                   f"{SLICER_TAG} pins in SuperBuild/External_CTK.cmake)",
            "slicer": f"github.com/Slicer/Slicer {SLICER_TAG} ({slicer_commit}): */DesignerPlugins/*Plugin.cxx",
        },
        "qt": qt,
        "ctk": plugin_classes(a.ctk, ctk_commit, r"Plugins/ctk.*Plugin\.(cpp|cxx)$", "ctk"),
        "slicer": plugin_classes(a.slicer, slicer_commit, r"DesignerPlugins/.*Plugin\.cxx$", "q"),
    }
    out = Path(__file__).with_name("slicer510_widget_classes.json")
    out.write_text(json.dumps(data, indent=1) + "\n")
    print(f"{out}: {len(data['qt'])} Qt, {len(data['ctk'])} CTK, {len(data['slicer'])} Slicer classes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
