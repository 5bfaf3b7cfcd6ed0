package chaos_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// binDir holds the binaries this test process builds; TestMain removes it.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp(os.Getenv("KMSGATE_TEST_WORK"), "chaos-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// repoRoot returns the main module's directory (this module is gateway/chaos).
func repoRoot(t testing.TB) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

var (
	buildMu sync.Mutex
	built   = map[string]string{}
)

// binary returns the path of a command: the file named by the environment
// variable env when it is set (scripts/test.sh builds the test servers
// once), else a build of package pkg in module directory dir (relative to
// the repository root), made once per test process.
func binary(t testing.TB, env, dir, pkg string, flags ...string) string {
	t.Helper()
	if env != "" {
		if p := os.Getenv(env); p != "" {
			return p
		}
	}
	key := dir + " " + pkg + " " + strings.Join(flags, " ")
	buildMu.Lock()
	defer buildMu.Unlock()
	if p, ok := built[key]; ok {
		return p
	}
	out := filepath.Join(binDir, fmt.Sprintf("bin%d-%s", len(built), filepath.Base(pkg)))
	args := append(append([]string{"build"}, flags...), "-o", out, pkg)
	cmd := exec.Command("go", args...)
	cmd.Dir = filepath.Join(repoRoot(t), dir)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s in %s: %v\n%s", strings.Join(args, " "), dir, err, b)
	}
	built[key] = out
	return out
}

// freePort returns a free TCP port on 127.0.0.1.
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// tailBuffer keeps the last MiB written to it.
type tailBuffer struct {
	mu  sync.Mutex
	b   []byte
	all int
}

const tailMax = 1 << 20

func (l *tailBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.all += len(p)
	l.b = append(l.b, p...)
	if len(l.b) > tailMax {
		l.b = append(l.b[:0], l.b[len(l.b)-tailMax:]...)
	}
	return len(p), nil
}

func (l *tailBuffer) String() string { l.mu.Lock(); defer l.mu.Unlock(); return string(l.b) }

// proc is a process started by a test: a backend's test server or kmsgate.
type proc struct {
	t        testing.TB
	name     string
	bin      string
	args     []string
	env      []string // nil: this process's environment
	addrFile string   // when set, start waits for the process to write it
	addr     string   // what it wrote
	log      *tailBuffer

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// newProc returns an unstarted process that is killed when the test ends.
func newProc(t testing.TB, name, bin string, env []string, args ...string) *proc {
	p := &proc{t: t, name: name, bin: bin, args: args, env: env, log: &tailBuffer{}}
	t.Cleanup(p.kill)
	return p
}

// start starts the process and, with an address file, waits up to 60 s for
// it.
func (p *proc) start() {
	p.t.Helper()
	if p.addrFile != "" {
		_ = os.Remove(p.addrFile)
	}
	cmd := exec.Command(p.bin, p.args...)
	cmd.Env = p.env
	cmd.Stdout, cmd.Stderr = p.log, p.log
	if err := cmd.Start(); err != nil {
		p.t.Fatalf("start %s: %v", p.name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	p.mu.Lock()
	p.cmd, p.done = cmd, done
	p.mu.Unlock()
	if p.addrFile == "" {
		return
	}
	for end := time.Now().Add(60 * time.Second); time.Now().Before(end); {
		if b, err := os.ReadFile(p.addrFile); err == nil && len(b) > 0 {
			p.addr = strings.TrimSpace(string(b))
			return
		}
		select {
		case <-done:
			p.t.Fatalf("%s exited before it served:\n%s", p.name, p.log.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	p.t.Fatalf("%s did not write %s within 60 s:\n%s", p.name, p.addrFile, p.log.String())
}

func (p *proc) current() (*exec.Cmd, chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd, p.done
}

// pid returns the process id.
func (p *proc) pid() int { c, _ := p.current(); return c.Process.Pid }

// exited reports whether the process has ended.
func (p *proc) exited() bool {
	_, done := p.current()
	select {
	case <-done:
		return true
	default:
		return false
	}
}

// kill ends the process at once (SIGKILL), as a crash would, and waits for
// it. A frozen process dies too.
func (p *proc) kill() {
	cmd, done := p.current()
	if cmd == nil {
		return
	}
	select {
	case <-done:
		return
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-done
}

// stop sends SIGTERM and waits up to 15 s; it returns the exit status, or an
// error when the process had to be killed.
func (p *proc) stop() error {
	cmd, done := p.current()
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
		if cmd.ProcessState.Success() {
			return nil
		}
		return fmt.Errorf("%s: %s", p.name, cmd.ProcessState)
	case <-time.After(15 * time.Second):
		p.kill()
		return fmt.Errorf("%s did not exit within 15 s of SIGTERM", p.name)
	}
}

// freeze stops the process (SIGSTOP) and waits until the kernel says it is
// stopped: its listening socket still accepts connections, nothing answers.
func (p *proc) freeze() {
	p.t.Helper()
	if err := syscall.Kill(p.pid(), syscall.SIGSTOP); err != nil {
		p.t.Fatal(err)
	}
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.pid()))
		if err != nil {
			p.t.Fatal(err)
		}
		if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) && (stat[i+2] == 'T' || stat[i+2] == 't') {
			return
		}
	}
	p.t.Fatalf("%s did not stop after SIGSTOP", p.name)
}

// thaw continues a frozen process (SIGCONT).
func (p *proc) thaw() {
	p.t.Helper()
	if err := syscall.Kill(p.pid(), syscall.SIGCONT); err != nil {
		p.t.Fatal(err)
	}
}

// openFDs counts the open file descriptors of the process.
func (p *proc) openFDs() int {
	p.t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p.pid()))
	if err != nil {
		p.t.Fatal(err)
	}
	return len(ents)
}

// fdList describes the open file descriptors of the process, one a line.
func (p *proc) fdList() string {
	dir := fmt.Sprintf("/proc/%d/fd", p.pid())
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err.Error()
	}
	socks := tcpSockets()
	var b strings.Builder
	for _, e := range ents {
		target, _ := os.Readlink(filepath.Join(dir, e.Name()))
		fmt.Fprintf(&b, "%s -> %s %s\n", e.Name(), target, socks[strings.TrimSuffix(strings.TrimPrefix(target, "socket:["), "]")])
	}
	return b.String()
}

// tcpStates names the states of /proc/net/tcp.
var tcpStates = map[string]string{"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1", "05": "FIN_WAIT2",
	"06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING"}

// tcpSockets describes the IPv4 TCP sockets of this machine by inode:
// local port, remote port and state.
func tcpSockets() map[string]string {
	out := map[string]string{}
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		return out
	}
	port := func(hexAddr string) string {
		_, p, _ := strings.Cut(hexAddr, ":")
		n, _ := strconv.ParseUint(p, 16, 32)
		return strconv.FormatUint(n, 10)
	}
	for _, l := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(l)
		if len(f) < 10 {
			continue
		}
		out[f[9]] = fmt.Sprintf("tcp :%s -> :%s %s", port(f[1]), port(f[2]), tcpStates[f[3]])
	}
	return out
}

// rssKiB returns the resident set size of the process (VmRSS).
func (p *proc) rssKiB() int {
	p.t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.pid()))
	if err != nil {
		p.t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			n, err := strconv.Atoi(f[1])
			if err != nil {
				p.t.Fatal(err)
			}
			return n
		}
	}
	p.t.Fatal("no VmRSS in /proc/PID/status")
	return 0
}

// cleanEnv returns this process's environment without the variables that
// would point kmsgate or a cloud SDK elsewhere (KMSGATE_*, AWS_*, VAULT_*,
// GOOGLE_*), plus extra.
func cleanEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "KMSGATE_") || strings.HasPrefix(k, "AWS_") || strings.HasPrefix(k, "VAULT_") || strings.HasPrefix(k, "GOOGLE_") || k == "GOGC" {
			continue
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}

// gateway is a `kmsgate serve` process.
type gateway struct {
	*proc
	url, admin string
	token      string // bearer token of the sign API client "chaos"
	http       *http.Client
}

// startGateway runs kmsgate serve on free 127.0.0.1 ports with a config
// holding one sign API client and the given arguments; it does not wait for
// readiness.
func startGateway(t testing.TB, bin string, env []string, args ...string) *gateway {
	t.Helper()
	dir := t.TempDir()
	port, adminPort := freePort(t), freePort(t)
	token := fmt.Sprintf("chaos-token-%d-%d", port, time.Now().UnixNano())
	sum := sha256.Sum256([]byte(token))
	cfg := filepath.Join(dir, "kmsgate.yaml")
	conf := fmt.Sprintf("clients:\n  - name: chaos\n    token-sha256: %s\n    audiences: [\"*\"]\n    subjects: [\"*\"]\n    max-ttl: 1h\n", hex.EncodeToString(sum[:]))
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	full := append([]string{"serve", "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--admin-listen", fmt.Sprintf("127.0.0.1:%d", adminPort),
		"--issuer", base, "--config", cfg, "--audit-log", filepath.Join(dir, "audit.log"), "--request-log-sample", "0"}, args...)
	g := &gateway{proc: newProc(t, "kmsgate", bin, env, full...), url: base, admin: fmt.Sprintf("http://127.0.0.1:%d", adminPort), token: token,
		http: &http.Client{Timeout: 30 * time.Second}}
	g.start()
	return g
}

// get fetches a URL and returns the status, the body and the headers; a
// transport error fails the test.
func (g *gateway) get(url string) (int, []byte, http.Header) {
	g.t.Helper()
	resp, err := g.http.Get(url)
	if err != nil {
		g.t.Fatalf("GET %s: %v\n%s", url, err, g.log.String())
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b, resp.Header
}

// waitListening waits (up to 60 s) until the admin port answers.
func (g *gateway) waitListening() {
	g.t.Helper()
	for end := time.Now().Add(60 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if g.exited() {
			g.t.Fatalf("kmsgate exited:\n%s", g.log.String())
		}
		if resp, err := g.http.Get(g.admin + "/healthz"); err == nil {
			resp.Body.Close()
			return
		}
	}
	g.t.Fatalf("kmsgate not listening after 60 s:\n%s", g.log.String())
}

// waitReady polls /readyz until 200 and returns how long that took; it
// fails the test after within.
func (g *gateway) waitReady(within time.Duration) time.Duration {
	g.t.Helper()
	start := time.Now()
	for time.Since(start) < within {
		if g.exited() {
			g.t.Fatalf("kmsgate exited:\n%s", g.log.String())
		}
		resp, err := g.http.Get(g.admin + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return time.Since(start)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	g.t.Fatalf("kmsgate not ready after %s:\n%s", within, g.log.String())
	return 0
}

// metric returns the sum of the samples of metric name on the admin port
// whose labels contain every one of labels (`result="ok"`).
func (g *gateway) metric(name string, labels ...string) float64 {
	g.t.Helper()
	_, body, _ := g.get(g.admin + "/metrics")
	var sum float64
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if !strings.HasPrefix(l, name) || len(l) == len(name) || (l[len(name)] != ' ' && l[len(name)] != '{') {
			continue
		}
		ok := true
		for _, want := range labels {
			ok = ok && strings.Contains(l, want)
		}
		if !ok {
			continue
		}
		f := strings.Fields(l)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			g.t.Fatalf("metric line %q: %v", l, err)
		}
		sum += v
	}
	return sum
}

// metricLines returns the sample lines of metric name on the admin port.
func (g *gateway) metricLines(name string) string {
	g.t.Helper()
	_, body, _ := g.get(g.admin + "/metrics")
	var b strings.Builder
	for _, l := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(l, name) {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// liveHeapMiB makes the gateway collect garbage twice (the heap profile
// with gc=1, --pprof; the second collection drops what sync.Pools kept
// through the first) and returns its heap then
// (go_memstats_heap_alloc_bytes).
func (g *gateway) liveHeapMiB() float64 {
	g.t.Helper()
	for range 2 {
		if st, _, _ := g.get(g.admin + "/debug/pprof/heap?gc=1"); st != http.StatusOK {
			g.t.Fatalf("heap profile: %d", st)
		}
	}
	return g.metric("go_memstats_heap_alloc_bytes") / (1 << 20)
}

// goroutines returns go_goroutines from the admin port's /metrics, and how
// many of them are idle fasthttp server workers, read from the goroutine
// profile (--pprof): fasthttp keeps a worker that served a connection for
// 10 s of idleness before it ends it, a pool and not a leak.
func (g *gateway) goroutines() (all, idleWorkers int) {
	g.t.Helper()
	all = int(g.metric("go_goroutines"))
	_, prof, _ := g.get(g.admin + "/debug/pprof/goroutine?debug=1")
	for _, group := range strings.Split(string(prof), "\n\n") {
		lines := strings.Split(strings.TrimSpace(group), "\n")
		if strings.HasPrefix(lines[0], "goroutine profile:") {
			lines = lines[1:]
		}
		if len(lines) != 3 || !strings.Contains(lines[1], "fasthttp.(*workerPool).workerFunc") || !strings.Contains(lines[2], "fasthttp.(*workerPool).getCh") {
			continue
		}
		n, _, _ := strings.Cut(lines[0], " @ ")
		c, err := strconv.Atoi(n)
		if err != nil {
			g.t.Fatalf("goroutine profile line %q", lines[0])
		}
		idleWorkers += c
	}
	return all, idleWorkers
}

// settled returns the goroutines (less fasthttp's idle workers) and open
// files of the process once two readings 300 ms apart agree (at most 10 s),
// after prepare has closed idle connections.
func (g *gateway) settled(prepare func()) (goroutines, idleWorkers, fds int) {
	g.t.Helper()
	prepare()
	pg, pf := -1, -1
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(300 * time.Millisecond) {
		all, idle := g.goroutines()
		gr, fd := all-idle, g.openFDs()
		goroutines, idleWorkers, fds = gr, idle, fd
		if gr == pg && fd == pf {
			return
		}
		pg, pf = gr, fd
	}
	return
}

// envDuration reads a duration from the environment.
func envDuration(t testing.TB, name string, def time.Duration) time.Duration {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		t.Fatalf("%s=%q: want a duration such as 30s", name, v)
	}
	return d
}

// envInt reads a positive whole number from the environment.
func envInt(t testing.TB, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q: want a positive whole number", name, v)
	}
	return n
}

// writeFigures prints a figure table and, under scripts/test.sh, keeps it
// in the run's work directory, where the script prints it at the end.
func writeFigures(t testing.TB, name, table string) {
	fmt.Print(table)
	if dir := os.Getenv("KMSGATE_TEST_WORK"); dir != "" {
		if err := os.WriteFile(filepath.Join(dir, "figures-"+name+".txt"), []byte(table), 0o644); err != nil {
			t.Error(err)
		}
	}
}

func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
