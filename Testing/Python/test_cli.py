"""The command line: dispatcher, info, clear errors instead of tracebacks."""

import subprocess
import sys

from medvlsam2.cli import main
from medvlsam2.cli.segment import DOUBTFUL, EMPTY_RESULT


def test_info_lists_every_named_config(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert all(f"[{name}]" in out for name in ("tiny", "base", "paper")) and "device:" in out


def test_errors_are_one_line_messages(capsys):
    assert main(["weights", "path", "no-such-weights"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unknown weights") and "Traceback" not in err


def test_package_import_is_light():
    code = "import sys, medvlsam2, medvlsam2.errors, medvlsam2.utils.cancel; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_segment_writes_a_mask_with_the_input_geometry(tmp_path, capsys):
    import numpy as np
    import SimpleITK as sitk

    from medvlsam2.io.volume import Volume

    direction = np.array([[1.0, 0.0, 0.0], [0.0, 0.8, -0.6], [0.0, 0.6, 0.8]])
    ct = Volume(np.full((6, 32, 40), -50, np.int16), (0.7, 0.9, 2.5), (5.0, 6.0, 7.0), direction)
    sitk.WriteImage(ct.to_sitk(), str(tmp_path / "ct.nii.gz"))
    out = tmp_path / "mask.seg.nrrd"
    # random weights may find no voxels at the click (exit 3: mask written but empty) or a mask without the clicked
    # voxel (exit 5); either way the click's warning is printed. The geometry is checked here
    code = main(["segment", str(tmp_path / "ct.nii.gz"), "--point", "20,16,3,+", "-o", str(out), "--model", "tiny"])
    assert code in (0, 3, 5)
    assert (code in (3, 5)) == ("positive click at (20, 16, 3) is not in the result" in capsys.readouterr().err)
    mask = sitk.ReadImage(str(out))
    assert mask.GetSize() == (40, 32, 6)
    np.testing.assert_allclose(mask.GetDirection(), direction.ravel(), atol=1e-6)
    np.testing.assert_allclose(mask.GetSpacing(), ct.spacing, atol=1e-6)
    np.testing.assert_allclose(mask.GetOrigin(), ct.origin, atol=1e-6)
    assert main(["segment", str(tmp_path / "ct.nii.gz"), "--point", "1,2", "-o", str(out)]) == 1
    assert main(["segment", str(tmp_path / "ct.nii.gz"), "-o", str(out)]) == 1


def test_segment_runs_at_the_precision_asked_and_refuses_one_the_device_lacks(tmp_path, capsys):
    import numpy as np
    import SimpleITK as sitk

    from medvlsam2.io.volume import Volume

    sitk.WriteImage(Volume(np.full((4, 32, 32), -50, np.int16)).to_sitk(), str(tmp_path / "ct.nii.gz"))
    out = tmp_path / "mask.seg.nrrd"
    args = ["segment", str(tmp_path / "ct.nii.gz"), "--point", "16,16,2,+", "-o", str(out), "--model", "tiny",
            "--device", "cpu"]
    assert main(args + ["--precision", "fp16"]) == 1
    assert "fp16 runs only on a CUDA GPU" in capsys.readouterr().err and not out.exists()
    # random weights: an empty mask (3) or one whose click disagrees with it (5, written with a warning)
    assert main(args + ["--precision", "bf16"]) in (0, EMPTY_RESULT, DOUBTFUL) and out.exists()


def test_segment_takes_a_2d_box_on_a_slice(tmp_path, capsys):
    import numpy as np
    import SimpleITK as sitk

    from medvlsam2.io.volume import Volume

    sitk.WriteImage(Volume(np.full((6, 32, 40), 60, np.int16)).to_sitk(), str(tmp_path / "ct.nii.gz"))
    out = tmp_path / "mask.nii.gz"
    ct = str(tmp_path / "ct.nii.gz")
    assert main(["segment", ct, "--box", "4,4,30,26", "--slice", "2", "-o", str(out), "--model", "tiny",
                 "--no-propagate"]) in (0, 3)  # 3: random weights found nothing (the mask is still written)
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert not mask[np.arange(6) != 2].any()  # only the box's slice
    assert not mask[2, :4].any() and not mask[2, :, 31:].any()  # and only inside the box
    capsys.readouterr()
    assert main(["segment", ct, "--box", "4,4,30,26", "-o", str(out)]) == 1
    assert "needs --slice" in capsys.readouterr().err
    assert main(["segment", ct, "--box", "4,4,1,30,26,3", "--slice", "2", "-o", str(out)]) == 1
