def test_version_and_help(cli):
    r = cli("--version")
    assert r.returncode == 0 and "tudui" in r.stdout
    r = cli("train", "--help")
    assert r.returncode == 0 and "--img-size" in r.stdout and "--label-smoothing" in r.stdout
