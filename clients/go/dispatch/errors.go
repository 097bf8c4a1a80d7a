package dispatch

import (
	"errors"
	"fmt"
	"strconv"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ReasonWrongNode and ErrorDomain identify the google.rpc.ErrorInfo of a call
// sent to a cluster node that does not own the call's shop (protos/dispatch/v1/cluster.proto).
const (
	ReasonWrongNode = "WRONG_NODE"
	ErrorDomain     = "dispatch.v1"
)

// Error is a failed call, or a failed item of a batch (DispatchBatch, Operate):
// the status code and message, and the decoded status details. Every error the
// Client returns for a server's answer is an *Error:
//
//	var e *dispatch.Error
//	if errors.As(err, &e) && e.WrongNode != nil { /* send it to e.WrongNode.OwnerAddress */ }
//
// errors.Is(err, dispatch.ErrNotFound) (and the other Err values) compares codes.
type Error struct {
	// Code is the gRPC status code (codes.NotFound, codes.FailedPrecondition, ...).
	Code codes.Code
	// Message is the server's message; it names the offending field or id.
	Message string
	// WrongNode is set when a cluster node refused the call because another node
	// owns its shop (FAILED_PRECONDITION with a WRONG_NODE ErrorInfo).
	WrongNode *WrongNode
	// Details are the status details the client could decode (for example
	// *errdetails.ErrorInfo); details of unknown types are left out.
	Details []interface{}

	st *status.Status
}

// WrongNode names the node that owns a shop, from the WRONG_NODE ErrorInfo.
type WrongNode struct {
	// ShopID is the call's shop.
	ShopID string
	// Partition is the shop's partition: CRC-32 (IEEE) of the shop id mod the partition count.
	Partition uint32
	// Owner is the name of the node that owns the partition (e.g. "dispatch-1").
	Owner string
	// OwnerAddress is where callers reach the owner (host:port).
	OwnerAddress string
	// Epoch is the epoch of the cluster map the refusing node serves by.
	Epoch uint64
}

func (e *Error) Error() string {
	if e.WrongNode != nil {
		return fmt.Sprintf("dispatch: %s (wrong node: owner %s at %s, epoch %d): %s",
			e.Code, e.WrongNode.Owner, e.WrongNode.OwnerAddress, e.WrongNode.Epoch, e.Message)
	}
	return fmt.Sprintf("dispatch: %s: %s", e.Code, e.Message)
}

// Is reports whether target is an *Error with the same code, so that
// errors.Is(err, dispatch.ErrNotFound) works.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// GRPCStatus lets status.FromError and status.Code read the error (details included).
func (e *Error) GRPCStatus() *status.Status {
	if e.st != nil {
		return e.st
	}
	return status.New(e.Code, e.Message)
}

// Sentinel errors for errors.Is: only the code is compared.
var (
	ErrInvalidArgument    = &Error{Code: codes.InvalidArgument}
	ErrNotFound           = &Error{Code: codes.NotFound}
	ErrAlreadyExists      = &Error{Code: codes.AlreadyExists}
	ErrFailedPrecondition = &Error{Code: codes.FailedPrecondition}
	ErrPermissionDenied   = &Error{Code: codes.PermissionDenied}
	ErrUnauthenticated    = &Error{Code: codes.Unauthenticated}
	ErrResourceExhausted  = &Error{Code: codes.ResourceExhausted}
	ErrUnavailable        = &Error{Code: codes.Unavailable}
)

// Code is err's status code: codes.OK for nil, codes.Unknown for an error that
// carries no status.
func Code(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return status.Code(err)
}

// IsInvalidArgument reports whether err has code INVALID_ARGUMENT.
func IsInvalidArgument(err error) bool { return Code(err) == codes.InvalidArgument }

// IsNotFound reports whether err has code NOT_FOUND (an unknown shop, agent,
// group or conversation).
func IsNotFound(err error) bool { return Code(err) == codes.NotFound }

// IsAlreadyExists reports whether err has code ALREADY_EXISTS (a conversation
// id in use with another buyer).
func IsAlreadyExists(err error) bool { return Code(err) == codes.AlreadyExists }

// IsFailedPrecondition reports whether err has code FAILED_PRECONDITION
// (WRONG_NODE included).
func IsFailedPrecondition(err error) bool { return Code(err) == codes.FailedPrecondition }

// IsResourceExhausted reports whether err has code RESOURCE_EXHAUSTED.
func IsResourceExhausted(err error) bool { return Code(err) == codes.ResourceExhausted }

// IsUnavailable reports whether err has code UNAVAILABLE.
func IsUnavailable(err error) bool { return Code(err) == codes.Unavailable }

// WrongNodeOf returns the owner named by a WRONG_NODE error, or nil for any other error.
func WrongNodeOf(err error) *WrongNode {
	var e *Error
	if errors.As(err, &e) {
		return e.WrongNode
	}
	return nil
}

// FromError turns a gRPC status error (from this package or from the
// dispatchv1 stubs) into an *Error. nil stays nil; an *Error and an error
// without a status are returned as they are.
func FromError(err error) error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	return fromStatus(st)
}

// FromStatus is the error of a batch item (DispatchResponse.Error,
// OperationResult.Error): nil when st is nil or OK, else an *Error.
func FromStatus(st *rpcstatus.Status) error {
	if st == nil || codes.Code(st.GetCode()) == codes.OK {
		return nil
	}
	return fromStatus(status.FromProto(st))
}

func fromStatus(st *status.Status) *Error {
	e := &Error{Code: st.Code(), Message: st.Message(), st: st}
	for _, d := range st.Details() {
		if _, failed := d.(error); failed {
			continue // a detail of a type this binary does not know
		}
		e.Details = append(e.Details, d)
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetReason() == ReasonWrongNode && info.GetDomain() == ErrorDomain {
			e.WrongNode = wrongNode(info.GetMetadata())
		}
	}
	return e
}

func wrongNode(m map[string]string) *WrongNode {
	w := &WrongNode{ShopID: m["shop_id"], Owner: m["owner"], OwnerAddress: m["owner_address"]}
	if p, err := strconv.ParseUint(m["partition"], 10, 32); err == nil {
		w.Partition = uint32(p)
	}
	if epoch, err := strconv.ParseUint(m["epoch"], 10, 64); err == nil {
		w.Epoch = epoch
	}
	return w
}
