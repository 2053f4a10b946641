"""The reproduction report: the audit's verdict first, the paper's numbers beside ours with
their uncertainty, the ImageNet-free ResNet-50, the mixed-controls variant and external sites.

- :mod:`cxrflow.report.outputs`: where one run's step outputs are;
- :mod:`cxrflow.report.sections`: the verdict, the headline table and the sections beyond the
  paper;
- :mod:`cxrflow.report.build`: :func:`build_report`, the document.
"""

from cxrflow.report.build import PAPER, build_report
from cxrflow.report.outputs import LOCAL_RUNS, RunOutputs, data_of_run

__all__ = ["LOCAL_RUNS", "PAPER", "RunOutputs", "build_report", "data_of_run"]
