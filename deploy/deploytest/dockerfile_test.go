package deploytest

import (
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// instruction is one Dockerfile instruction with its continuation lines
// joined.
type instruction struct {
	line int
	op   string // upper case: FROM, RUN, COPY, ...
	args string
}

func parseDockerfile(path string) ([]instruction, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []instruction
	var cur strings.Builder
	startLine := 0
	for i, line := range strings.Split(string(data), "\n") {
		trimmed := strings.TrimSpace(line)
		if cur.Len() == 0 && (trimmed == "" || strings.HasPrefix(trimmed, "#")) {
			continue
		}
		if cur.Len() > 0 && strings.HasPrefix(trimmed, "#") {
			continue // comment inside a continued instruction
		}
		if cur.Len() == 0 {
			startLine = i + 1
		}
		if strings.HasSuffix(trimmed, "\\") {
			cur.WriteString(strings.TrimSuffix(trimmed, "\\") + " ")
			continue
		}
		cur.WriteString(trimmed)
		op, args, _ := strings.Cut(cur.String(), " ")
		out = append(out, instruction{line: startLine, op: strings.ToUpper(op), args: strings.Join(strings.Fields(args), " ")})
		cur.Reset()
	}
	if cur.Len() > 0 {
		return nil, fmt.Errorf("%s: unterminated continuation at the end", path)
	}
	return out, nil
}

// runCommand strips RUN's own flags (--mount=..., --network=...) and
// returns the shell command.
func runCommand(args string) string {
	f := strings.Fields(args)
	for len(f) > 0 && strings.HasPrefix(f[0], "--") {
		f = f[1:]
	}
	return strings.Join(f, " ")
}

// dockerfileBuildCommand returns the command of the RUN in the Dockerfile's
// stage that builds ./cmd/kmsgate: "build" for the release binary,
// "build-pkcs11" for the PKCS#11 one.
func dockerfileBuildCommand(path, stage string) (string, error) {
	ins, err := parseDockerfile(path)
	if err != nil {
		return "", err
	}
	var found []string
	cur := ""
	for _, in := range ins {
		if in.op == "FROM" {
			f := strings.Fields(in.args)
			cur = ""
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				cur = f[2]
			}
		}
		if in.op != "RUN" || cur != stage {
			continue
		}
		if c := runCommand(in.args); strings.Contains(c, "go build") && strings.Contains(c, "./cmd/kmsgate") {
			found = append(found, c)
		}
	}
	if len(found) != 1 {
		return "", fmt.Errorf("%s: want exactly one RUN that builds ./cmd/kmsgate in stage %s, found %d: %q", path, stage, len(found), found)
	}
	return found[0], nil
}

// makeBuildCommand returns the recipe of the Makefile's target: build is
// the release build CI runs, build-pkcs11 the PKCS#11 variant.
func makeBuildCommand(path, target string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	lines := strings.Split(string(data), "\n")
	for i, l := range lines {
		if !regexp.MustCompile(`^` + regexp.QuoteMeta(target) + `\s*:`).MatchString(l) {
			continue
		}
		var recipe []string
		for _, r := range lines[i+1:] {
			if !strings.HasPrefix(r, "\t") {
				break
			}
			recipe = append(recipe, strings.Join(strings.Fields(r), " "))
		}
		if len(recipe) != 1 {
			return "", fmt.Errorf("%s: want a one-line build recipe, got %q", path, recipe)
		}
		return recipe[0], nil
	}
	return "", errors.New(path + ": no " + target + " target")
}

// runBuild runs a build command of the form `[NAME=VALUE...] go build ...
// -o PATH ...` from the repository root, with the output redirected to out.
func runBuild(command, out string) error {
	f := strings.Fields(command)
	var env []string
	for len(f) > 0 && regexp.MustCompile(`^[A-Z_][A-Z0-9_]*=`).MatchString(f[0]) {
		env = append(env, f[0])
		f = f[1:]
	}
	if len(f) < 2 || f[0] != "go" || f[1] != "build" {
		return fmt.Errorf("build command %q is not `[VAR=VALUE...] go build ...`", command)
	}
	args := append([]string(nil), f[1:]...)
	replaced := false
	for i := range args {
		if args[i] == "-o" && i+1 < len(args) {
			args[i+1], replaced = out, true
		}
	}
	if !replaced {
		return fmt.Errorf("build command %q has no -o", command)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), env...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %v\n%s", command, err, b)
	}
	return nil
}

// TestDockerfileBuildsTheReleaseBinary checks that the image is built with
// CI's release command and that the binary it makes is static and runs.
// (The image itself needs a Docker engine, which CI does not have.)
func TestDockerfileBuildsTheReleaseBinary(t *testing.T) {
	dockerfile := filepath.Join(root, "deploy", "Dockerfile")
	inDocker, err := dockerfileBuildCommand(dockerfile, "build")
	if err != nil {
		t.Fatal(err)
	}
	inMake, err := makeBuildCommand(filepath.Join(root, "Makefile"), "build")
	if err != nil {
		t.Fatal(err)
	}
	if inDocker != inMake {
		t.Fatalf("the Dockerfile builds with\n  %s\nbut `make build` (CI's release build) with\n  %s", inDocker, inMake)
	}
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath"} {
		if !strings.Contains(" "+inDocker+" ", " "+want+" ") {
			t.Errorf("the release build %q lacks %s", inDocker, want)
		}
	}

	bin, _ := binaries(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "version").CombinedOutput()
	if err != nil {
		t.Fatalf("kmsgate version: %v\n%s", err, out)
	}
	// Built from the git checkout: the version names its commit and date.
	if !regexp.MustCompile(`^kmsgate \S+ \(commit [0-9a-f]{40}( modified)?, \d{4}-\d\d-\d\dT[0-9:]+Z\) go1\.\S+ linux/\w+\n$`).Match(out) {
		t.Errorf("kmsgate version printed %q, want the version, commit and date of the checkout", out)
	}

	// Static: no program interpreter and no shared libraries, so it runs on
	// a base image without libc.
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("the release binary is dynamically linked (it has a PT_INTERP program header)")
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("the release binary needs shared libraries %v", libs)
	}
}

// TestDockerfileBuildsThePKCS11Variant checks the release-pkcs11 target:
// its binary is built with `make build-pkcs11`'s command (cgo and the
// pkcs11 tag) and runs on a distroless base with glibc, as the same
// non-root user as the release image.
func TestDockerfileBuildsThePKCS11Variant(t *testing.T) {
	dockerfile := filepath.Join(root, "deploy", "Dockerfile")
	inDocker, err := dockerfileBuildCommand(dockerfile, "build-pkcs11")
	if err != nil {
		t.Fatal(err)
	}
	inMake, err := makeBuildCommand(filepath.Join(root, "Makefile"), "build-pkcs11")
	if err != nil {
		t.Fatal(err)
	}
	if inDocker != inMake {
		t.Fatalf("the Dockerfile builds the PKCS#11 variant with\n  %s\nbut `make build-pkcs11` with\n  %s", inDocker, inMake)
	}
	for _, want := range []string{"CGO_ENABLED=1", "-tags pkcs11", "-trimpath"} {
		if !strings.Contains(" "+inDocker+" ", " "+want+" ") {
			t.Errorf("the PKCS#11 build %q lacks %s", inDocker, want)
		}
	}
	ins, err := parseDockerfile(dockerfile)
	if err != nil {
		t.Fatal(err)
	}
	var stage, from, user, entrypoint, copied string
	for _, in := range ins {
		if in.op == "FROM" {
			f := strings.Fields(in.args)
			stage = ""
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				stage = f[2]
			}
			if stage == "release-pkcs11" {
				from = f[0]
			}
			continue
		}
		if stage != "release-pkcs11" {
			continue
		}
		switch in.op {
		case "USER":
			user = in.args
		case "ENTRYPOINT":
			entrypoint = in.args
		case "COPY":
			if f := strings.Fields(in.args); f[0] == "--from=build-pkcs11" {
				copied = f[1]
			}
		}
	}
	outPath := regexp.MustCompile(`-o (\S+)`).FindStringSubmatch(inDocker)
	switch {
	case !strings.HasPrefix(from, "gcr.io/distroless/base"):
		t.Errorf("release-pkcs11 is FROM %q, want a distroless base with glibc (the HSM library is loaded with dlopen)", from)
	case !regexp.MustCompile(`^[1-9][0-9]*:[1-9][0-9]*$`).MatchString(user):
		t.Errorf("release-pkcs11 runs as USER %q, want a numeric non-root uid:gid", user)
	case entrypoint != `["/kmsgate"]`:
		t.Errorf("release-pkcs11 ENTRYPOINT %s", entrypoint)
	case outPath == nil || copied != "/src/"+outPath[1]:
		t.Errorf("release-pkcs11 copies %q, but the build writes %v", copied, outPath)
	}
}

// TestDockerfileRunsAsNonRootOnMinimalBase checks the release stage.
func TestDockerfileRunsAsNonRootOnMinimalBase(t *testing.T) {
	ins, err := parseDockerfile(filepath.Join(root, "deploy", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	// Stages by name, and the instructions of the last one (the default
	// target, which is the release image).
	stages := map[string]string{}
	var last []instruction
	var lastFrom, stage, workdir, buildWorkdir string
	for _, in := range ins {
		switch in.op {
		case "FROM":
			f := strings.Fields(in.args)
			lastFrom, last, workdir, stage = f[0], nil, "", ""
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				stages[f[2]] = f[0]
				stage = f[2]
			}
		case "WORKDIR":
			workdir = in.args
		case "RUN":
			if c := runCommand(in.args); stage == "build" && strings.Contains(c, "./cmd/kmsgate") {
				buildWorkdir = workdir
			}
		}
		last = append(last, in)
	}
	if !strings.HasPrefix(lastFrom, "gcr.io/distroless/static") {
		t.Errorf("the release stage is FROM %s, want a distroless static base", lastFrom)
	}
	if stages["build"] == "" || stages["demo-app"] == "" || stages["release"] == "" {
		t.Errorf("stages %v: want build, demo-app and release (compose.yaml uses the last two)", stages)
	}
	var user, entrypoint, copySrc string
	var exposed []string
	for _, in := range last {
		switch in.op {
		case "EXPOSE":
			exposed = append(exposed, strings.Fields(in.args)...)
		case "USER":
			user = in.args
		case "ENTRYPOINT":
			entrypoint = in.args
		case "COPY":
			if strings.HasPrefix(in.args, "--from=build ") {
				copySrc = strings.Fields(in.args)[1]
			}
		}
	}
	if !regexp.MustCompile(`^[1-9][0-9]*:[1-9][0-9]*$`).MatchString(user) {
		t.Errorf("the release stage runs as USER %q, want a numeric non-root uid:gid (so runAsNonRoot can check it)", user)
	}
	if entrypoint != `["/kmsgate"]` {
		t.Errorf("ENTRYPOINT %s, want [\"/kmsgate\"]", entrypoint)
	}
	// EXPOSE documents the ports the Kubernetes container has: traffic and
	// the admin listener.
	r, err := decodeStrict(kustomize(t, filepath.Join(root, "deploy", "kubernetes", "base")))
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, p := range one(t, "container", one(t, "Deployment", r.deployments).Spec.Template.Spec.Containers).Ports {
		want = append(want, fmt.Sprint(p.ContainerPort))
	}
	for i, e := range exposed {
		exposed[i] = strings.TrimSuffix(e, "/tcp")
	}
	slices.Sort(want)
	slices.Sort(exposed)
	if !slices.Equal(exposed, want) {
		t.Errorf("the release stage EXPOSEs %v, the Kubernetes container has ports %v", exposed, want)
	}
	build, _ := dockerfileBuildCommand(filepath.Join(root, "deploy", "Dockerfile"), "build")
	outPath := regexp.MustCompile(`-o (\S+)`).FindStringSubmatch(build)
	if outPath == nil || copySrc != filepath.Join(buildWorkdir, outPath[1]) {
		t.Errorf("the release stage copies %q, but the build writes %v in %s", copySrc, outPath, buildWorkdir)
	}
}

// TestDockerfileDownloadStep replays the build stage up to its
// `go mod download` with only the files the Dockerfile copies by then: the
// step must find every module the main go.mod needs (the verifier modules
// it replaces with folders of the repository included).
func TestDockerfileDownloadStep(t *testing.T) {
	ins, err := parseDockerfile(filepath.Join(root, "deploy", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	workdir := ""
	for _, in := range ins {
		switch in.op {
		case "WORKDIR":
			workdir = in.args
		case "COPY":
			f := strings.Fields(in.args)
			if strings.HasPrefix(f[0], "--") || len(f) < 2 {
				continue
			}
			srcs, dst := f[:len(f)-1], f[len(f)-1]
			if srcs[0] == "." {
				t.Fatal("the Dockerfile copies the whole tree before go mod download")
			}
			for _, src := range srcs {
				b, err := os.ReadFile(filepath.Join(root, src))
				if err != nil {
					t.Fatalf("COPY %s: %v", src, err)
				}
				to := filepath.Join(dir, dst)
				if strings.HasSuffix(dst, "/") {
					to = filepath.Join(dir, dst, filepath.Base(src))
				}
				if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(to, b, 0o644); err != nil {
					t.Fatal(err)
				}
			}
		case "RUN":
			if c := runCommand(in.args); c == "go mod download" {
				if workdir != "/src" {
					t.Fatalf("go mod download runs in %q", workdir)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
				defer cancel()
				cmd := exec.CommandContext(ctx, "go", "mod", "download")
				cmd.Dir = dir
				cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=")
				if out, err := cmd.CombinedOutput(); err != nil {
					t.Fatalf("go mod download with only what the Dockerfile copied: %v\n%s", err, out)
				}
				return
			}
		}
	}
	t.Fatal("the Dockerfile has no RUN go mod download")
}
