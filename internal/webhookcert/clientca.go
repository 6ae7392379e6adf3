package webhookcert

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"sync"
	"time"
)

// RequireClientCert returns a TLS option that makes a server require a client certificate signed
// by a CA in caFile (PEM), as the API server presents one to admission webhooks it is configured
// for. The file is read again when it changes (checked at most every few seconds), so the CA can
// be rotated without a restart. It fails at once when caFile holds no certificate.
func RequireClientCert(caFile string) (func(*tls.Config), error) {
	l := &caLoader{file: caFile}
	if _, err := l.pool(); err != nil {
		return nil, err
	}
	return func(base *tls.Config) {
		base.ClientAuth = tls.RequireAndVerifyClientCert
		base.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
			pool, err := l.pool()
			if err != nil {
				return nil, err
			}
			c := base.Clone()
			c.GetConfigForClient = nil
			c.ClientCAs = pool
			return c, nil
		}
	}, nil
}

// caLoader keeps the pool of a CA file, read again when the file's modification time changes.
type caLoader struct {
	file string

	mu      sync.Mutex
	checked time.Time
	modTime time.Time
	current *x509.CertPool
}

func (l *caLoader) pool() (*x509.CertPool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.current != nil && time.Since(l.checked) < 5*time.Second {
		return l.current, nil
	}
	info, err := os.Stat(l.file)
	if err != nil {
		if l.current != nil {
			return l.current, nil // keep the last good CA while the file is being replaced
		}
		return nil, fmt.Errorf("reading the client CA: %w", err)
	}
	l.checked = time.Now()
	if l.current != nil && info.ModTime().Equal(l.modTime) {
		return l.current, nil
	}
	raw, err := os.ReadFile(l.file)
	if err != nil {
		return nil, fmt.Errorf("reading the client CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(raw) {
		if l.current != nil {
			return l.current, nil
		}
		return nil, fmt.Errorf("the client CA file %s holds no PEM certificate", l.file)
	}
	l.current, l.modTime = pool, info.ModTime()
	return pool, nil
}
