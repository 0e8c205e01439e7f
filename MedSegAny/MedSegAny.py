"""MedSegAny: promptable 3D segmentation in 3D Slicer (a thin client of the MedSegAnyLib library).

The widget only shows state and forwards clicks; everything it does is in
``MedSegAnyLib.slicer_logic.SlicerSegmentationLogic`` (usable from the Python console, tested headless),
model calls run in ``MedSegAnyLib.slicer_worker.ModelWorker`` and the widget's timer applies each slice
on the main thread as it arrives.
"""

import logging

import ctk
import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from MedSegAnyLib.slicer_logic import SlicerSegmentationLogic

#: Panel shortcuts: (key sequence, what it does). Alt-combinations do not clash with Slicer's slice-view
#: keys (B/F move slices, Ctrl+Z is the Segment Editor's own undo); Alt+F/E/V/H are the main window's menu
#: mnemonics (&File, &Edit, &View, &Help), which make a shortcut on the same keys ambiguous (never fired).
SHORTCUTS = (
    ("Alt+B", "placeBox", "place a box"),
    ("Alt+P", "placePositive", "place a positive point"),
    ("Alt+N", "placeNegative", "place a negative point"),
    ("Alt+M", "useEdit", "take the segment as edited on the view's slice as the prompt"),
    ("Alt+G", "propagate", "propagate"),
    ("Alt+C", "cancel", "cancel the running propagation"),
    ("Ctrl+Alt+Z", "undo", "undo the last AI action"),
    ("Ctrl+Alt+Y", "redo", "redo"),
    ("Alt+A", "accept", "accept: keep the segment, clear the prompts"),
)
VIEW_NAMES = ("Red", "Yellow", "Green")
DIRECTIONS = (
    ("both", "Both directions"),
    ("up", "Up (increasing slice)"),
    ("down", "Down"),
    ("range", "Range"),
)
#: Poll the worker every 50 ms: 20 updates/s keeps the display live without measurable load.
POLL_INTERVAL_MS = 50
#: Progress of encoding ahead, 4 times a second (a slice takes 0.3-0.6 s on a 2-core CPU).
ENCODE_AHEAD_POLL_MS = 250


class MedSegAny(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MedSegAny"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["MedSegAny developers"]
        self.parent.helpText = (
            "Draw a box or click points on one slice; the AI model segments the object there and propagates "
            "it through the volume into the chosen segment, honouring Segment Editor masking. Shortcuts: "
            + ", ".join(f"{keys} {text}" for keys, _, text in SHORTCUTS)
            + "."
        )
        self.parent.acknowledgementText = (
            "Models: LiteMedSAM, MedSAM, SAM 2 and MedSAM2 by their authors (licences shown in the panel)."
        )


class MedSegAnyWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Thin panel: selectors, buttons and a timer that applies worker results. No installs here."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.worker = None
        self.running = None
        self.loadingAhead = None  # the worker job loading the model before the first action
        self.encodeAhead = None  # MedSegAnyLib.slicer_encode_ahead.EncodeAhead, once the worker exists
        self.encodeTimer = None
        # what the status line says before the encoding-ahead progress: the placing instruction, or the
        # last action's summary
        self.statusPrefix = ""
        self.shortcuts = []
        self.timer = None
        self._viewAxis = None

    # -- setup -------------------------------------------------------------------------------------
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedSegAny.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MedSegAnyLogic()

        from MedSegAnyLib.intensity import PRESET_NAMES
        from MedSegAnyLib.models.catalog import load_catalog

        for card in load_catalog().values():
            if card.is_usable:
                self.ui.modelComboBox.addItem(card.name, card.id)
        self.ui.modelComboBox.setCurrentIndex(max(0, self.ui.modelComboBox.findData("litemedsam")))
        for device in ("auto", "cpu", "cuda", "mps"):
            self.ui.deviceComboBox.addItem(device)
        for preset in PRESET_NAMES:
            self.ui.intensityComboBox.addItem(preset)
        for name in VIEW_NAMES:
            self.ui.viewComboBox.addItem(name)
        for key, text in DIRECTIONS:
            self.ui.directionComboBox.addItem(text, key)
        from MedSegAnyLib.terminology import structure_names

        self.ui.structureComboBox.addItem("")  # empty: a plain "MedSegAny N" segment, as before
        for name in structure_names():
            self.ui.structureComboBox.addItem(name)
        self.ui.structureComboBox.lineEdit().setPlaceholderText("none (plain segment)")

        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateGUI)
        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onVolumeChanged)
        self.ui.encodeAheadCheckBox.connect("toggled(bool)", self.onEncodeAheadToggled)
        self.ui.segmentSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateGUI)
        self.ui.segmentSelector.connect("currentSegmentChanged(QString)", self.updateGUI)
        self.ui.newSegmentButton.connect("clicked()", self.onNewSegment)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.intensityComboBox.connect("currentIndexChanged(int)", self.onIntensityChanged)
        self.ui.directionComboBox.connect("currentIndexChanged(int)", self.updateGUI)
        self.ui.downloadButton.connect("clicked()", self.onDownloadWeights)
        self.ui.importWeightsButton.connect("clicked()", self.onImportWeights)
        self.ui.removeWeightsButton.connect("clicked()", self.onRemoveWeights)
        self.ui.placeBoxButton.connect("clicked()", self.placeBox)
        self.ui.placePositiveButton.connect("clicked()", self.placePositive)
        self.ui.placeNegativeButton.connect("clicked()", self.placeNegative)
        self.ui.useEditButton.connect("clicked()", self.useEdit)
        self.ui.propagateButton.connect("clicked()", self.propagate)
        self.ui.cancelButton.connect("clicked()", self.cancel)
        self.ui.undoButton.connect("clicked()", self.undo)
        self.ui.redoButton.connect("clicked()", self.redo)
        self.ui.acceptButton.connect("clicked()", self.accept)

        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_INTERVAL_MS)
        self.timer.connect("timeout()", self.poll)
        self.encodeTimer = qt.QTimer()
        self.encodeTimer.setInterval(ENCODE_AHEAD_POLL_MS)
        self.encodeTimer.connect("timeout()", self._pollEncodeAhead)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.onModelChanged()
        self.updateGUI()

    def enter(self):
        self._installShortcuts()
        self._loadModelAhead()

    def exit(self):
        self._removeShortcuts()

    def cleanup(self):
        """Module reload or Slicer exit. A propagation still running is finished as a cancelled one: only
        stopping the timer and the worker left the slices it had written in the segment with no undo step
        and no provenance."""
        self._removeShortcuts()
        self.removeObservers()
        for timer in (self.timer, self.encodeTimer):
            if timer is not None:
                timer.stop()
        self._stopEncodingAhead()
        self._finishRunningAction("the module closed")
        if self.worker is not None:
            self.worker.shutdown()

    def onSceneStartClose(self, caller=None, event=None):
        self._stopEncodingAhead()
        self._finishRunningAction("the scene closed")
        if self.logic is not None:
            self.logic.forget_scene()  # its session, undo steps and nodes go with the scene
        self.updateGUI()

    def _finishRunningAction(self, when):
        """Cancel the running action and finish it: it stops after the slice in flight, whose result is
        written, and the slices written are one undo step with its provenance, as Cancel leaves them."""
        running, self.running = self.running, None
        if running is not None:
            running.cancel()
            try:  # its error is not shown: the panel is going away, or the scene it belongs to
                running.wait(timeout_s=60)
            except Exception as error:
                logging.info(f"MedSegAny: the action running when {when} ended with: {error}")

    def _installShortcuts(self):
        if self.shortcuts:
            return
        for keys, method, _ in SHORTCUTS:
            shortcut = qt.QShortcut(qt.QKeySequence(keys), slicer.util.mainWindow())
            shortcut.connect("activated()", getattr(self, method))
            self.shortcuts.append(shortcut)

    def _removeShortcuts(self):
        for shortcut in self.shortcuts:
            shortcut.disconnect("activated()")
            shortcut.setParent(None)
        self.shortcuts = []

    # -- state -------------------------------------------------------------------------------------
    def _showError(self, error):
        from MedSegAnyLib.errors import MedSegAnyError

        if isinstance(error, MedSegAnyError):
            self.ui.statusLabel.text = str(error)
            slicer.util.warningDisplay(str(error), windowTitle="MedSegAny")
        else:
            # the error's own traceback: called with a worker's error, outside any except block, where
            # logging.exception logged "NoneType: None"
            logging.error("MedSegAny failed", exc_info=error)
            slicer.util.errorDisplay(f"MedSegAny failed: {error}", windowTitle="MedSegAny")

    def updateGUI(self, *args):
        running = self.running is not None
        ready = self.ui.inputVolumeSelector.currentNode() is not None and bool(
            self.ui.segmentSelector.currentSegmentID()
        )
        placeButtons = (self.ui.placeBoxButton, self.ui.placePositiveButton, self.ui.placeNegativeButton)
        for button in (*placeButtons, self.ui.useEditButton):
            button.enabled = ready and not running
        self.ui.propagateButton.enabled = ready and not running
        self.ui.cancelButton.enabled = running
        self.ui.undoButton.enabled = self.logic is not None and self.logic.can_undo
        self.ui.redoButton.enabled = self.logic is not None and self.logic.can_redo
        self.ui.acceptButton.enabled = ready and not running
        isRange = self.ui.directionComboBox.currentData == "range"
        self.ui.rangeFromSpinBox.enabled = self.ui.rangeToSpinBox.enabled = isRange
        self._updateIntensityLabel()

    def _updateIntensityLabel(self):
        volumeNode = self.ui.inputVolumeSelector.currentNode()
        if volumeNode is None or not self._setTarget(quiet=True):
            self.ui.intensityLabel.text = ""
            return
        try:
            window = self.logic.intensity_window()
            self.ui.intensityLabel.text = f"{window.name}: [{window.low:g}, {window.high:g}] (on a copy)"
        except Exception as error:  # a display hint only: never block the panel
            self.ui.intensityLabel.text = str(error)

    def onModelChanged(self, *args):
        modelId = self.ui.modelComboBox.currentData
        device = self.ui.deviceComboBox.currentText
        if not modelId or self.logic is None:
            return
        self._stopEncodingAhead()  # the worker is needed for the new model
        try:
            self.logic.configure(model=modelId, device=device)
        except Exception as error:
            self._showError(error)
            return
        self._updateModelInfo()
        self._loadModelAhead()

    def _updateModelInfo(self):
        """The model's licence and weights, and what the chosen volume needs with it (a hint: never
        blocks; the memory part shows once PyTorch is loaded, see ``memory_preview``)."""
        from MedSegAnyLib.slicer_install import weights_status

        modelId = self.ui.modelComboBox.currentData
        if not modelId or self.logic is None:
            return
        try:
            status = weights_status(modelId)
        except Exception as error:
            self._showError(error)
            return
        try:
            preview = self.logic.memory_preview(self.ui.inputVolumeSelector.currentNode())
            self.ui.modelInfoLabel.toolTip = ""
        except Exception as error:  # a display hint only
            preview = ""
            self.ui.modelInfoLabel.toolTip = str(error)
        self.ui.modelInfoLabel.text = " - ".join(part for part in (status, preview) if part)

    def _loadModelAhead(self):
        """Load the model on the worker now when that asks the user nothing (bundled or downloaded
        weights, packages installed): a CPU compiles the encoder (~5 s from inductor's cache, 20-40 s the
        first time) while the user finds the slice."""
        try:
            if self.logic is None or self.logic.model_loaded or not self.logic.can_load_unasked():
                return
            from MedSegAnyLib.slicer_worker import ModelWorker

            if self.worker is None:
                self.worker = ModelWorker()
            if self.worker.busy:
                return
            logic = self.logic
            self.loadingAhead = self.worker.submit(lambda context: [logic.load_model()], label="load model")
            self.ui.statusLabel.text = "Loading the model in the background..."
            qt.QTimer.singleShot(500, self._checkLoadingAhead)
        except Exception:  # a head start only: the first action loads the model and reports any problem
            logging.exception("MedSegAny: loading the model ahead failed")

    def _checkLoadingAhead(self):
        handle = self.loadingAhead
        if handle is None:  # an action took it over
            return
        if not handle.finished:
            qt.QTimer.singleShot(500, self._checkLoadingAhead)
            return
        failed = any(event.kind == "error" for event in handle.drain())
        self.loadingAhead = None
        if not failed and not self.logic.model_loaded:
            # the model or device was changed while this one loaded (a busy worker could not take it
            # then): the chosen one loads now, rather than "Model ready" for a model that is not
            self._loadModelAhead()
            if self.loadingAhead is not None:
                return
        if self.running is None:
            if failed:
                self.ui.statusLabel.text = "Loading the model failed; it is tried again at the first action."
            elif not self.logic.model_loaded:  # it asks the user first (a download): the first action does
                self.ui.statusLabel.text = "The chosen model is loaded at the first action."
            else:
                self.ui.statusLabel.text = "Model ready: place a box or points."
                self._updateModelInfo()  # PyTorch is loaded now: the memory line can be told
                self._encodeAheadFromView()

    def onIntensityChanged(self, *args):
        self._stopEncodingAhead()  # the features of another window would be dropped anyway
        try:
            self.logic.configure(intensity=self.ui.intensityComboBox.currentText)
        except Exception as error:
            self._showError(error)
        self.updateGUI()
        self._encodeAheadFromView()  # again, in the new window

    def onNewSegment(self):
        from MedSegAnyLib.slicer_logic import create_segment
        from MedSegAnyLib.terminology import resolve_structure

        try:  # an unknown structure is refused before anything is added to the scene
            structure = resolve_structure(self.ui.structureComboBox.currentText)
        except Exception as error:
            self._showError(error)
            return
        segmentationNode = self.ui.segmentSelector.currentNode()
        if segmentationNode is None:
            segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
            segmentationNode.CreateDefaultDisplayNodes()
            self.ui.segmentSelector.setCurrentNode(segmentationNode)
        count = segmentationNode.GetSegmentation().GetNumberOfSegments()
        name = None if structure is not None else f"MedSegAny {count + 1}"
        segmentId = create_segment(segmentationNode, name, structure=structure)
        self.ui.segmentSelector.setCurrentSegmentID(segmentId)
        if structure is not None:
            self.ui.statusLabel.text = (
                f"New segment '{segmentationNode.GetSegmentation().GetSegment(segmentId).GetName()}': "
                f"{structure.type.meaning} (SNOMED CT {structure.type.value})"
            )

    def _segmentEditorWidget(self):
        try:
            return slicer.modules.segmenteditor.widgetRepresentation().self().editor
        except Exception:
            return None

    def _setTarget(self, quiet=False):
        volumeNode = self.ui.inputVolumeSelector.currentNode()
        segmentationNode = self.ui.segmentSelector.currentNode()
        segmentId = self.ui.segmentSelector.currentSegmentID()
        if volumeNode is None or segmentationNode is None or not segmentId:
            if not quiet:
                slicer.util.warningDisplay("Choose a volume, a segmentation and a segment first.")
            return False
        editor = self._segmentEditorWidget()
        editorNode = editor.mrmlSegmentEditorNode() if editor is not None else None
        if editorNode is None:
            editorNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSegmentEditorNode")
        try:
            self.logic.set_target(volumeNode, segmentationNode, segmentId, segment_editor_node=editorNode)
        except Exception as error:
            if not quiet:
                self._showError(error)
            return False
        return True

    # -- encoding ahead ----------------------------------------------------------------------------
    def onVolumeChanged(self, *args):
        self._stopEncodingAhead()  # its features belong to the previous volume
        self._updateModelInfo()
        self._encodeAheadFromView()

    def onEncodeAheadToggled(self, checked):
        if checked:
            self._encodeAheadFromView()
        else:
            self._stopEncodingAhead()

    def _encodeAheadFromView(self):
        """Encode slices on the idle worker from the one the chosen view shows (see
        MedSegAnyLib.slicer_encode_ahead); only once the model is loaded, never during an action."""
        if not self.ui.encodeAheadCheckBox.checked or self.running is not None:
            return
        if self.worker is None or self.loadingAhead is not None or not self.logic.model_loaded:
            return
        volumeNode = self.ui.inputVolumeSelector.currentNode()
        if volumeNode is None:
            return
        from MedSegAnyLib.slicer_encode_ahead import EncodeAhead
        from MedSegAnyLib.slicer_logic import view_slice_axis, view_slice_index

        try:
            if not self._setTarget(quiet=True):  # no segment chosen yet: the volume is enough here
                self.logic.set_volume(volumeNode)
            sliceNode = self._viewSliceNode()
            axis = view_slice_axis(sliceNode, volumeNode)
            index = view_slice_index(sliceNode, volumeNode, axis)
            if self.encodeAhead is None or self.encodeAhead.worker is not self.worker:
                self.encodeAhead = EncodeAhead(self.logic, self.worker)
            if self.encodeAhead.request(axis, index):
                self.encodeTimer.start()
        except Exception as error:  # a head start only (an oblique view...): the action reports problems
            logging.info("MedSegAny: not encoding ahead: %s", error)

    def _pollEncodeAhead(self):
        if self.encodeAhead is None:
            self.encodeTimer.stop()
            return
        message = self.encodeAhead.poll()
        if message is not None:
            if self.running is None:  # the placing instruction stays in front
                self.ui.statusLabel.text = f"{self.statusPrefix} {message}".strip()
            return
        if self.encodeAhead.running or self.encodeAhead.pending is not None:
            return
        self.encodeTimer.stop()
        progress = self.encodeAhead.progress
        if self.running is None and progress is not None:
            ready = f"{progress.cached} of {progress.frame_count} slices encoded ahead."
            self.ui.statusLabel.text = f"{self.statusPrefix or 'Model ready:'} {ready}"

    def _stopEncodingAhead(self):
        if self.encodeAhead is not None:
            self.encodeAhead.stop()
        if self.encodeTimer is not None:
            self.encodeTimer.stop()

    # -- prompts -----------------------------------------------------------------------------------
    def _viewSliceNode(self):
        return slicer.app.layoutManager().sliceWidget(self.ui.viewComboBox.currentText).mrmlSliceNode()

    def _startPlacing(self, index):
        from MedSegAnyLib.mrml_markups import clear_markups
        from MedSegAnyLib.slicer_logic import view_slice_axis

        if self.running is not None or not self._setTarget():
            return
        try:
            self._viewAxis = view_slice_axis(self._viewSliceNode(), self.logic.volume_node)
        except Exception as error:
            self._showError(error)  # an oblique view is refused here, before anything is placed
            return
        nodes = self.logic.prompt_nodes(slicer.mrmlScene)
        if index == 0:  # a new box starts a new prompt: old box and points go
            for node in nodes:
                clear_markups(node)  # the ROI: placed with two clicks again
        node = nodes[index]
        self.removeObservers(self.onPromptPlaced)
        for promptNode in nodes:
            self.addObserver(promptNode, promptNode.PointPositionDefinedEvent, self.onPromptPlaced)
        selectionNode = slicer.app.applicationLogic().GetSelectionNode()
        selectionNode.SetReferenceActivePlaceNodeClassName(node.GetClassName())
        selectionNode.SetActivePlaceNodeID(node.GetID())
        interactionNode = slicer.app.applicationLogic().GetInteractionNode()
        interactionNode.SetPlaceModePersistence(index != 0)  # points: keep clicking; box: one
        interactionNode.SetCurrentInteractionMode(interactionNode.Place)
        self.statusPrefix = f"Place in the {self.ui.viewComboBox.currentText} view."
        self.ui.statusLabel.text = self.statusPrefix
        self._encodeAheadFromView()  # this view's slice first, while the user draws

    def placeBox(self):
        self._startPlacing(0)

    def placePositive(self):
        self._startPlacing(1)

    def placeNegative(self):
        self._startPlacing(2)

    def useEdit(self):
        """The target segment as painted or erased on the slice the chosen view shows becomes that slice's
        prompt (a correction of the AI's result there, or the start of one from a hand-drawn slice)."""
        from MedSegAnyLib.slicer_logic import view_slice_axis, view_slice_index

        if self.running is not None or not self._setTarget():
            return
        try:
            sliceNode, volumeNode = self._viewSliceNode(), self.logic.volume_node
            axis = view_slice_axis(sliceNode, volumeNode)
            index = view_slice_index(sliceNode, volumeNode, axis)
        except Exception as error:  # an oblique view
            self._showError(error)
            return
        propagate = self.ui.autoPropagateCheckBox.checked
        self._run(lambda: self.logic.plan_edit_action(axis, index, propagate=propagate))

    def onPromptPlaced(self, caller=None, event=None):
        """A box or point was placed: segment that slice now (and propagate if the box is checked)."""
        from MedSegAnyLib.mrml_markups import roi_is_placed
        from MedSegAnyLib.slicer_logic import (
            flatten_roi_to_slice,
            flatten_roi_to_view_slice,
            keep_prompts_on_the_new_points_slice,
            snap_last_point_to_view_slice,
        )

        if self.running is not None:
            return
        roi, positive, negative = self.logic.prompt_nodes(slicer.mrmlScene)
        if caller is not None and caller == roi and not roi_is_placed(roi):
            return  # the first corner of a box (Slicer places an ROI with two clicks): the box comes next
        volumeNode = self.logic.volume_node
        if caller is not None and caller in (positive, negative):  # a point on a new slice: a new prompt
            try:
                # on the slice the view shows: a view slightly off the volume's axes cuts several slices
                snap_last_point_to_view_slice(caller, self._viewSliceNode(), volumeNode, self._viewAxis)
                keep_prompts_on_the_new_points_slice(
                    caller,
                    (roi, positive, negative),
                    volumeNode,
                    self._viewAxis,
                    covers_slice=lambda index: self.logic.object_covers_slice(self._viewAxis, index),
                )
            except Exception as error:  # e.g. a non-linear transform: told, as the action would
                self._showError(error)
                return
        hasBox = roi_is_placed(roi)  # after a point on a new slice took the box away
        if hasBox:
            try:  # a box just drawn goes on the view's slice; one drawn before keeps its own
                if caller == roi:
                    flatten_roi_to_view_slice(roi, self._viewSliceNode(), volumeNode, self._viewAxis)
                else:
                    flatten_roi_to_slice(roi, volumeNode, self._viewAxis)
            except Exception as error:
                self._showError(error)
                return
        self._run(
            lambda: self.logic.plan_prompt_action(
                roi if hasBox else None,  # a corner left alone (placement abandoned) is no box
                positive,
                negative,
                axis=self._viewAxis,
                propagate=self.ui.autoPropagateCheckBox.checked,
            )
        )

    # -- actions -----------------------------------------------------------------------------------
    def _ensureReady(self):
        """First use: install the model's Python packages and weights, with consent, then load it."""
        from MedSegAnyLib.models.catalog import get_card
        from MedSegAnyLib.slicer_install import download_weights, ensure_python_packages
        from MedSegAnyLib.slicer_worker import ModelWorker

        card = get_card(self.logic.model_id)
        ensure_python_packages(card.family, confirm=slicer.util.confirmOkCancelDisplay)
        if card.status != "bundled":
            progress = slicer.util.createProgressDialog(
                labelText=f"Downloading {card.name}...", maximum=100
            )
            try:
                download_weights(
                    card.id,
                    accept_license=slicer.util.confirmOkCancelDisplay,
                    progress=lambda done, total: self._downloadProgress(progress, done, total),
                    cancelled=lambda: progress.wasCanceled,  # its Cancel button stops the download
                )
            finally:
                progress.close()
        if self.worker is None:
            self.worker = ModelWorker()
        # show=False: the caller shows an error once (tryWithErrorDisplay shows a popup, then raises again)
        with slicer.util.tryWithErrorDisplay(show=False, waitCursor=True):
            # a compiled encoder (LiteMedSAM on a CPU with a C++ compiler) compiles here, once per session
            self.ui.statusLabel.text = f"Loading {card.name} (the first time on a CPU: about 30 s)..."
            slicer.app.processEvents()
            if self.loadingAhead is not None:  # loading since the panel opened: the rest of it
                handle, self.loadingAhead = self.loadingAhead, None
                handle.wait(timeout_s=None)  # an error of it comes again from the load below, shown
            # the worker is needed now: encoding ahead may run (Download pressed meanwhile, or started by
            # the events processed above when the model finished loading ahead), and would refuse the load
            self._stopEncodingAhead()
            self.worker.run_sync(lambda context: [self.logic.load_model()], label="load model")
            self.ui.statusLabel.text = f"{card.name} ready"

    @staticmethod
    def _downloadProgress(dialog, done, total):
        dialog.value = int(100 * done / total) if total else 0
        slicer.app.processEvents()

    def _saveSegmentEditorUndoState(self):
        """Let the Segment Editor's own undo (Ctrl+Z there) also step back over this AI action."""
        editor = self._segmentEditorWidget()
        if editor is not None and editor.segmentationNode() == self.logic.segmentation_node:
            editor.saveStateForUndo()

    def _run(self, plan):
        if self.running is not None or not self._setTarget():
            return
        if self.encodeAhead is not None and self.encodeAhead.running:
            # the encoder call in flight ends first (a slice: seconds for a large model on a CPU); the
            # panel stays responsive meanwhile, and what was encoded serves this action
            self.encodeAhead.cancel()
            self.ui.statusLabel.text = "Finishing the slice being encoded..."
            qt.QTimer.singleShot(ENCODE_AHEAD_POLL_MS // 5, lambda: self._run(plan))
            return
        self._stopEncodingAhead()
        self.statusPrefix = ""
        try:
            self._ensureReady()
            self._saveSegmentEditorUndoState()
            self.running = self.logic.start(self.worker, plan())
        except Exception as error:
            self._showError(error)
            self.updateGUI()
            return
        self.ui.progressBar.setRange(0, 0)  # busy until the first slice arrives
        self.ui.statusLabel.text = f"{self.running.action.label}..."
        self.timer.start()
        self.updateGUI()

    def poll(self):
        if self.running is None:
            self.timer.stop()
            return
        finished = self.running.poll()
        written = self.running.action.step.slices_written
        volumeNode = self.logic.volume_node
        axis = self.running.action.axis  # the prompt's view: slices along I, J or K
        dims = volumeNode.GetImageData().GetDimensions() if volumeNode is not None else (0, 0, 0)
        total = dims[2 if axis is None else axis]
        self.ui.progressBar.setRange(0, max(total, written))
        self.ui.progressBar.value = written
        if not finished:
            return
        self.timer.stop()
        running, self.running = self.running, None
        if running.error is not None:
            self._showError(running.error)
        else:
            state = "cancelled" if running.step is not None and running.step.cancelled else "done"
            self.statusPrefix = f"{running.action.label}: {state}, {written} slices written."
            if self.logic.memory_note:  # the memory plan gave way (fewer cached slices, host memory...)
                self.statusPrefix += " " + self.logic.memory_note
            self.ui.statusLabel.text = self.statusPrefix
            self.ui.statusLabel.toolTip = self.logic.memory_message
            self._encodeAheadFromView()  # the rest of the volume, for the next object or correction
        self.updateGUI()

    def propagate(self):
        direction = self.ui.directionComboBox.currentData or "both"
        sliceRange = None
        if direction == "range":
            sliceRange = (self.ui.rangeFromSpinBox.value, self.ui.rangeToSpinBox.value)
            direction = "both"
        self._run(lambda: self.logic.plan_propagation(direction, sliceRange))

    def cancel(self):
        if self.running is not None:
            self.running.cancel()
            self.ui.statusLabel.text = "Cancelling after the current slice..."

    def _shownOnce(self, action, waitCursor=False):
        """``action()``, its error shown by ``_showError``: slicer.util.tryWithErrorDisplay shows a popup
        with the traceback and raises the error again, out of the button's slot, skipping what follows."""
        try:
            with slicer.util.tryWithErrorDisplay(show=False, waitCursor=waitCursor):
                action()
        except Exception as error:
            self._showError(error)

    def undo(self):
        self._shownOnce(self.logic.undo, waitCursor=True)
        self.updateGUI()

    def redo(self):
        self._shownOnce(self.logic.redo, waitCursor=True)
        self.updateGUI()

    def accept(self):
        if self.running is not None:
            return
        self.logic.accept(self.logic.prompt_nodes(slicer.mrmlScene))
        self.ui.statusLabel.text = "Accepted: the segment is kept; place a new prompt for the next object."
        self.updateGUI()

    # -- weights -----------------------------------------------------------------------------------
    def onDownloadWeights(self):
        self.logic.configure(model=self.ui.modelComboBox.currentData)
        try:
            self._ensureReady()
        except Exception as error:
            self._showError(error)
        self.onModelChanged()

    def onImportWeights(self):
        from MedSegAnyLib.slicer_install import import_weights

        path = qt.QFileDialog.getOpenFileName(
            None, "Import model weights", "", "Checkpoints (*.pt *.pth *.ckpt)"
        )
        if path:
            self._shownOnce(lambda: import_weights(self.ui.modelComboBox.currentData, path), waitCursor=True)
        self.onModelChanged()

    def onRemoveWeights(self):
        from MedSegAnyLib.slicer_install import remove_weights

        modelId = self.ui.modelComboBox.currentData
        if slicer.util.confirmYesNoDisplay(f"Delete the downloaded weights of {modelId}?"):
            self._shownOnce(lambda: remove_weights(modelId))
        self.onModelChanged()


class MedSegAnyLogic(ScriptedLoadableModuleLogic, SlicerSegmentationLogic):
    """The module logic: :class:`SlicerSegmentationLogic` (console API) as a Slicer module logic.

    Example (Python console)::

        logic = slicer.util.getModuleLogic("MedSegAny")
        logic.set_target(volumeNode, segmentationNode, segmentId)
        logic.segment(roi_node=roiNode, positive_points_node=pointsNode)
        logic.undo()
    """

    def __init__(self, **kwargs):
        ScriptedLoadableModuleLogic.__init__(self)
        SlicerSegmentationLogic.__init__(self, **kwargs)


class _ThresholdSliceModel:
    """A tiny real SliceModel for the self-test (bright pixels in the box), so it needs no torch."""

    model_id = "self-test-threshold"

    def embed_frames(self, frames):
        return [frame.copy() for frame in frames]

    def predict(self, embedding, box_frame_xyxy=None, points_frame_xy=None, point_labels=None):
        import numpy as np

        from MedSegAnyLib.models.base import FramePrediction

        mask = embedding >= 128
        if box_frame_xyxy is not None:
            x0, y0, x1, y1 = box_frame_xyxy
            rows, cols = np.indices(embedding.shape)
            mask &= (cols >= x0) & (cols <= x1) & (rows >= y0) & (rows <= y1)
        return FramePrediction(np.where(mask, 6.0, -6.0).astype(np.float32), 0.9)


class MedSegAnyTest(ScriptedLoadableModuleTest):
    """Runs the module's logic path inside Slicer: phantom volume, ROI, propagation, undo."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_prompt_propagate_undo()

    def test_prompt_propagate_undo(self):
        import numpy as np

        from MedSegAnyLib.mrml_adapter import segment_mask_kji, volume_from_node
        from MedSegAnyLib.prompts import make_slice_prompts
        from MedSegAnyLib.session import SegmentationSession
        from MedSegAnyLib.slicer_logic import set_roi_box_ijk

        self.delayDisplay("Creating an oblique phantom volume")
        k, j, i = np.meshgrid(np.arange(9), np.arange(40), np.arange(44), indexing="ij")
        voxels_kji = np.where(
            ((k - 4) / 3.5) ** 2 + ((j - 20) / 12) ** 2 + ((i - 22) / 14) ** 2 <= 1, 150, -60
        )
        volumeNode = slicer.util.addVolumeFromArray(voxels_kji.astype(np.int16), name="MedSegAnyPhantom")
        ijkToRas = vtk.vtkMatrix4x4()
        transform = vtk.vtkTransform()
        transform.RotateZ(20)
        transform.RotateX(-10)
        transform.Scale(-0.8, 0.9, 2.0)  # flipped I axis, anisotropic voxels
        ijkToRas.DeepCopy(transform.GetMatrix())
        volumeNode.SetIJKToRASMatrix(ijkToRas)
        parent = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
        parentMatrix = vtk.vtkMatrix4x4()
        parentMatrix.SetElement(0, 3, 12.0)
        parent.SetMatrixTransformToParent(parentMatrix)
        volumeNode.SetAndObserveTransformNodeID(parent.GetID())

        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        segmentationNode.CreateDefaultDisplayNodes()
        segmentId = segmentationNode.GetSegmentation().AddEmptySegment("", "phantom")

        self.delayDisplay("Placing a box on slice K=4")
        logic = MedSegAnyLogic(model=_ThresholdSliceModel())
        logic.set_target(volumeNode, segmentationNode, segmentId)
        roi = logic.prompt_nodes(slicer.mrmlScene)[0]
        boxIjk = (6.0, 6.0, 4.0, 38.0, 34.0, 4.0)
        set_roi_box_ijk(roi, volumeNode, boxIjk)

        self.delayDisplay("Propagating")
        step = logic.segment(roi_node=roi)
        self.assertIsNotNone(step)

        session = SegmentationSession(volume_from_node(volumeNode), model=_ThresholdSliceModel())
        objectId = session.add_object("reference")
        session.add_prompts(objectId, make_slice_prompts(session.volume, box_ijk=boxIjk))
        for _ in session.propagate():
            pass
        result = segment_mask_kji(segmentationNode, segmentId, volumeNode)
        self.assertTrue(result.any(axis=(1, 2)).sum() >= 5)
        self.assertTrue(np.array_equal(result, session.mask_kji(objectId)))

        self.delayDisplay("Undo")
        logic.undo()
        self.assertFalse(segment_mask_kji(segmentationNode, segmentId, volumeNode).any())
        logic.redo()
        self.assertTrue(np.array_equal(segment_mask_kji(segmentationNode, segmentId, volumeNode), result))
        self.delayDisplay("Test passed")


# ctk is imported for the .ui's ctkCollapsibleButton plugin types used by loadUI.
_ = ctk
