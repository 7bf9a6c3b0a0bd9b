// Package emulator starts the official Google Cloud emulators for tests: each
// in its own process group (the gcloud launcher forks a JVM), on a free
// loopback port, stopped by ending the group.
package emulator

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Project is the project id tests use against the emulators.
const Project = "predworker-test"

// RequireEnv, when set (CI sets it), turns a missing emulator from a skip into
// a failure.
const RequireEnv = "PREDWORKER_REQUIRE_EMULATORS"

// SkipOrFail skips t with reason when an emulator is unavailable, or fails it
// when RequireEnv is set. It does nothing when reason is empty.
func SkipOrFail(t testing.TB, reason string) {
	t.Helper()
	if reason == "" {
		return
	}
	if os.Getenv(RequireEnv) != "" {
		t.Fatalf("emulator required (%s is set) but unavailable: %s", RequireEnv, reason)
	}
	t.Skipf("emulator unavailable: %s", reason)
}

// Process is a running emulator.
type Process struct {
	Host string // 127.0.0.1:port
	cmd  *exec.Cmd
	done chan struct{}
	log  string
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// hasComponent reports whether gcloud is installed with the named platform
// component (e.g. cloud-firestore-emulator).
func hasComponent(component string) (string, error) {
	gcloud, err := exec.LookPath("gcloud")
	if err != nil {
		return "", errors.New("gcloud is not installed")
	}
	real, err := filepath.EvalSymlinks(gcloud)
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(real), "..", "platform", component)); err != nil {
		return "", fmt.Errorf("gcloud lacks the %s component", component)
	}
	return gcloud, nil
}

// start runs `gcloud <args> --host-port=127.0.0.1:PORT` and waits until the
// emulator answers HTTP on that port. The port is free when chosen but not
// reserved: when another process took it before the emulator bound it (the
// emulator exits with a BindException), it starts again on another port,
// up to three times.
func start(component string, args ...string) (*Process, error) {
	var err error
	for range 3 {
		var p *Process
		if p, err = startOnce(component, args...); err == nil || !strings.Contains(err.Error(), "Address already in use") {
			return p, err
		}
	}
	return nil, err
}

func startOnce(component string, args ...string) (*Process, error) {
	gcloud, err := hasComponent(component)
	if err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	host := "127.0.0.1:" + strconv.Itoa(port)
	logf, err := os.CreateTemp("", component+"-*.log")
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(gcloud, append(args, "--host-port="+host, "--quiet")...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		_ = logf.Close()
		return nil, fmt.Errorf("start %s: %w", component, err)
	}
	p := &Process{Host: host, cmd: cmd, done: make(chan struct{}), log: logf.Name()}
	go func() { _ = cmd.Wait(); _ = logf.Close(); close(p.done) }()
	deadline := time.Now().Add(60 * time.Second)
	client := &http.Client{Timeout: time.Second}
	for {
		resp, err := client.Get("http://" + host + "/")
		if err == nil {
			_ = resp.Body.Close()
			return p, nil
		}
		select {
		case <-p.done:
			out, _ := os.ReadFile(p.log)
			return nil, fmt.Errorf("%s exited before answering: %s", component, out)
		default:
		}
		if time.Now().After(deadline) {
			p.Stop()
			return nil, fmt.Errorf("%s did not answer on %s within 60s", component, host)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Stop ends the emulator's process group: SIGTERM, then SIGKILL after 5 s.
func (p *Process) Stop() {
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGCONT)
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL) // stragglers of the group
	_ = os.Remove(p.log)
}

// Pause freezes the emulator (SIGSTOP to its group): calls to it hang, as in
// an outage. Resume thaws it.
func (p *Process) Pause() error { return syscall.Kill(-p.cmd.Process.Pid, syscall.SIGSTOP) }

// Resume thaws a paused emulator.
func (p *Process) Resume() error { return syscall.Kill(-p.cmd.Process.Pid, syscall.SIGCONT) }

// Firestore is a running Firestore emulator.
type Firestore struct{ *Process }

// StartFirestore starts the Firestore emulator and sets FIRESTORE_EMULATOR_HOST
// for this process (and the processes it starts).
func StartFirestore() (*Firestore, error) {
	p, err := start("cloud-firestore-emulator", "emulators", "firestore", "start")
	if err != nil {
		return nil, err
	}
	if err := os.Setenv("FIRESTORE_EMULATOR_HOST", p.Host); err != nil {
		p.Stop()
		return nil, err
	}
	return &Firestore{p}, nil
}

// PubSub is a running Pub/Sub emulator.
type PubSub struct{ *Process }

// StartPubSub starts the Pub/Sub emulator and sets PUBSUB_EMULATOR_HOST for
// this process (and the processes it starts). Unlike pstest, it really POSTs
// push requests and applies retry backoff and dead-letter policies.
func StartPubSub() (*PubSub, error) {
	p, err := start("pubsub-emulator", "beta", "emulators", "pubsub", "start", "--project="+Project)
	if err != nil {
		return nil, err
	}
	if err := os.Setenv("PUBSUB_EMULATOR_HOST", p.Host); err != nil {
		p.Stop()
		return nil, err
	}
	return &PubSub{p}, nil
}
