package admission_test

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/imageguard/imageguard/internal/admission"
)

// TestASlowBodyIsCut sends the headers of a 100-byte request and then 5 bytes of its body, and
// nothing more: the handler's read ends with the deadline, not when the caller gives up.
func TestASlowBodyIsCut(t *testing.T) {
	g := NewWithT(t)
	readErr := make(chan error, 1)
	srv := httptest.NewServer(admission.ReadDeadline(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, err := io.ReadAll(r.Body)
		readErr <- err
	}), 300*time.Millisecond))
	defer srv.Close()
	conn, err := net.Dial("tcp", strings.TrimPrefix(srv.URL, "http://"))
	g.Expect(err).NotTo(HaveOccurred())
	defer conn.Close()
	_, err = fmt.Fprintf(conn, "POST /validate-workloads HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"a\":")
	g.Expect(err).NotTo(HaveOccurred())
	var got error
	g.Eventually(readErr).WithTimeout(10 * time.Second).Should(Receive(&got))
	g.Expect(errors.Is(got, os.ErrDeadlineExceeded) || strings.Contains(fmt.Sprint(got), "timeout")).To(BeTrue(), "%v", got)
}
