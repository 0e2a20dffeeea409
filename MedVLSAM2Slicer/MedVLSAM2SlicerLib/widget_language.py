"""The panel's questions and report section (Slicer-only: needs qt and slicer), mixed into ``MedVLSAM2Panel``.

Streams the model's answer into the transcript or the report editor and keeps the report text node in sync.
"""

from __future__ import annotations

import qt
import slicer

ASK_CONTEXTS = ("Whole CT", "Current segment", "Box (ROI)")


class LanguagePanel:
    """Ask / report handlers; needs the panel's ``ui``, ``logic``, ``state``, ``parent`` and ``_run``."""

    def onAsk(self) -> None:
        question = self.ui.questionEdit.text.strip()
        context = None
        choice = self.ui.askContextSelector.currentText
        if choice == ASK_CONTEXTS[1] and self._segmentId() in self.logic.controller.objects:
            context = {"object": self.logic.controller.objects[self._segmentId()]}
        elif choice == ASK_CONTEXTS[2]:
            from . import markups

            try:
                context = {"box": markups.roi_to_box(self.logic.prompt_node(slicer.mrmlScene, "box"),
                                                     self.ui.inputVolumeSelector.currentNode())}
            except Exception as exc:
                self.state.set_error(str(exc))
                return
        import html

        self.ui.transcriptView.append(f"<b>Q:</b> {html.escape(question)}")
        self.ui.transcriptView.append("<b>A:</b> ")
        self._streamTarget = "transcript"
        self._run(self.logic.controller.ask, question, context)

    def onReport(self) -> None:
        self._streamTarget = "report"
        self.ui.reportEdit.plainText = ""
        self._run(self.logic.controller.report)

    def _onAnswerChunk(self, text: str) -> None:
        view = self.ui.transcriptView if self._streamTarget == "transcript" else self.ui.reportEdit
        cursor = view.textCursor()
        cursor.movePosition(qt.QTextCursor.End)
        cursor.insertText(text)

    def _onAnswerDone(self, job: str, text: str) -> None:
        if job == "report":
            self.ui.reportEdit.plainText = text

    def _onReportEdited(self) -> None:
        from . import report_node

        text = self.ui.reportEdit.plainText
        self.state.update(report_text=text)
        node = report_node.report_text_node(slicer.mrmlScene, create=False)
        if node is not None and not self.state.busy:
            node.SetText(text)

    def onSaveReport(self) -> None:
        from . import report_node

        path = qt.QFileDialog.getSaveFileName(self.parent, "Save draft report", "report.md", "Markdown (*.md)")
        if not path:
            return
        try:
            with slicer.util.tryWithErrorDisplay("Saving the report failed."):
                saved = report_node.save_markdown(self.ui.reportEdit.plainText, path)
        except Exception:
            return  # already shown to the user
        slicer.util.showStatusMessage(f"Report saved to {saved}", 5000)
