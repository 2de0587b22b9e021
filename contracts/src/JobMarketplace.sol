// SPDX-License-Identifier: MIT
// The project's own test contract: the JobMarketplace interface and rules of docs CHAIN.md
// section 4 (session jobs paid in ETH or an ERC-20 such as USDC, proofs, settlement, refunds),
// written from that interface alone. Not Fabstir's contract; for local test chains only.
//
// Choices where CHAIN.md leaves room (documented here and in contracts/README.md):
// - Job ids start at 1.
// - A proof may claim any positive number of tokens as long as all proven tokens stay within
//   what the deposit pays for ("Tokens exceed deposit"); padding the first proof up to the
//   proof interval is the host's business, not a rule here.
// - Settlement: cost = tokens x pricePerToken / 1000, capped by the deposit; the treasury keeps
//   10% of it, the host is credited the rest (hostEarnings, withdrawn with withdrawEarnings);
//   the unused deposit is credited to the depositor's in-contract balance
//   (RefundCreditedToDeposit; withdrawNative / withdrawToken). A session completed before any
//   proof charges minTokensFee tokens.
// - Timeout: anyone may call triggerSessionTimeout once block.timestamp > startTime +
//   maxDuration; the host is paid for proven tokens only (no minimum fee).
// - completeSessionJob (host or depositor) is allowed at any time while the job is active; the
//   dispute window is informational (the host waits it before completing).
pragma solidity ^0.8.24;

import {NodeRegistry} from "./NodeRegistry.sol";

interface IERC20Minimal {
    function transfer(address to, uint256 amount) external returns (bool);
    function transferFrom(address from, address to, uint256 amount) external returns (bool);
}

contract JobMarketplace {
    enum SessionStatus {
        Active,
        Completed,
        TimedOut
    }

    // Field order is the order sessionJobs(uint256) returns (CHAIN.md section 4).
    struct SessionJob {
        uint256 id;
        address depositor;
        address host;
        address paymentToken;
        uint256 deposit;
        uint256 pricePerToken;
        uint256 tokensUsed;
        uint256 maxDuration;
        uint256 startTime;
        uint256 lastProofTime;
        uint256 proofInterval;
        uint256 proofTimeoutWindow;
        SessionStatus status;
        uint256 withdrawnByHost;
        uint256 refundedToUser;
        string conversationCID;
        bytes32 lastProofHash;
        string lastProofCID;
    }

    struct CreateParams {
        address depositor;
        address host;
        bytes32 modelId;
        address token;
        uint256 deposit;
        uint256 pricePerToken;
        uint256 maxDuration;
        uint256 proofInterval;
        uint256 proofTimeoutWindow;
    }

    uint256 public constant PRICE_PRECISION = 1000;
    uint256 public constant TREASURY_FEE_PERCENT = 10;
    uint256 public constant MIN_DEPOSIT = 0.0001 ether;
    uint256 public constant MIN_PROOF_INTERVAL = 100;
    uint256 public constant MIN_PROOF_TIMEOUT_WINDOW = 60;
    uint256 public constant MAX_PROOF_TIMEOUT_WINDOW = 3600;

    NodeRegistry public immutable nodeRegistry;
    address public owner;
    uint256 public nextJobId = 1;
    uint256 public disputeWindow = 30;
    uint256 public minTokensFee = 100;

    mapping(uint256 => SessionJob) public sessionJobs;
    mapping(uint256 => bytes32) public sessionModel;
    // token => minimum deposit; 0 = token not accepted
    mapping(address => uint256) public tokenMinDeposits;
    mapping(address => uint256) public userDepositsNative;
    mapping(address => mapping(address => uint256)) public userDepositsToken;
    // host => token (0x0 = ETH) => earnings not yet withdrawn
    mapping(address => mapping(address => uint256)) public hostEarnings;
    // token (0x0 = ETH) => the treasury's accumulated fees
    mapping(address => uint256) public treasuryEarnings;

    event SessionJobCreated(
        uint256 indexed jobId, address indexed depositor, address indexed host, uint256 deposit
    );
    event SessionJobCreatedForModel(
        uint256 indexed jobId,
        address indexed depositor,
        address indexed host,
        bytes32 modelId,
        uint256 deposit
    );
    event SessionCreatedByDepositor(
        uint256 indexed sessionId, address indexed depositor, address indexed host, uint256 deposit
    );
    event ProofSubmitted(
        uint256 indexed jobId,
        address indexed host,
        uint256 tokensClaimed,
        bytes32 proofHash,
        string proofCID,
        string deltaCID
    );
    event SessionCompleted(
        uint256 indexed jobId, uint256 totalTokensUsed, uint256 hostEarnings, uint256 userRefund
    );
    event SessionTimedOut(uint256 indexed jobId, uint256 hostEarnings, uint256 userRefund);
    event RefundCreditedToDeposit(
        uint256 indexed jobId, address indexed depositor, uint256 amount, address indexed token
    );
    event DepositReceived(address indexed depositor, uint256 amount, address indexed token);
    event WithdrawalProcessed(address indexed depositor, uint256 amount, address indexed token);
    event EarningsWithdrawn(address indexed host, uint256 amount, address indexed token);
    event TokenMinDepositUpdated(address indexed token, uint256 minDeposit);

    modifier onlyOwner() {
        require(msg.sender == owner, "Only owner");
        _;
    }

    /// `stableToken` (USDC) is accepted with a minimum deposit of 500000 (0.50 USDC).
    constructor(NodeRegistry registry, address stableToken) {
        owner = msg.sender;
        nodeRegistry = registry;
        if (stableToken != address(0)) {
            tokenMinDeposits[stableToken] = 500000;
            emit TokenMinDepositUpdated(stableToken, 500000);
        }
    }

    // ---- admin (tests) ----

    /// Accept a token with this minimum deposit (0 = no longer accepted).
    function setTokenMinDeposit(address token, uint256 minDeposit) external onlyOwner {
        require(token != address(0), "Invalid token");
        tokenMinDeposits[token] = minDeposit;
        emit TokenMinDepositUpdated(token, minDeposit);
    }

    function setDisputeWindow(uint256 seconds_) external onlyOwner {
        disputeWindow = seconds_;
    }

    function setMinTokensFee(uint256 tokens) external onlyOwner {
        minTokensFee = tokens;
    }

    // ---- create ----

    function createSessionJobForModel(
        address host,
        bytes32 modelId,
        uint256 pricePerToken,
        uint256 maxDuration,
        uint256 proofInterval,
        uint256 proofTimeoutWindow
    ) external payable returns (uint256 jobId) {
        jobId = _create(
            CreateParams(
                msg.sender,
                host,
                modelId,
                address(0),
                msg.value,
                pricePerToken,
                maxDuration,
                proofInterval,
                proofTimeoutWindow
            )
        );
        emit SessionJobCreated(jobId, msg.sender, host, msg.value);
        emit SessionJobCreatedForModel(jobId, msg.sender, host, modelId, msg.value);
    }

    /// The depositor approves this contract for `deposit` first.
    function createSessionJobForModelWithToken(
        address host,
        bytes32 modelId,
        address token,
        uint256 deposit,
        uint256 pricePerToken,
        uint256 maxDuration,
        uint256 proofInterval,
        uint256 proofTimeoutWindow
    ) external returns (uint256 jobId) {
        require(token != address(0), "Use createSessionJobForModel for ETH");
        jobId = _create(
            CreateParams(
                msg.sender,
                host,
                modelId,
                token,
                deposit,
                pricePerToken,
                maxDuration,
                proofInterval,
                proofTimeoutWindow
            )
        );
        require(
            IERC20Minimal(token).transferFrom(msg.sender, address(this), deposit),
            "Token transfer failed"
        );
        emit SessionJobCreated(jobId, msg.sender, host, deposit);
        emit SessionJobCreatedForModel(jobId, msg.sender, host, modelId, deposit);
    }

    /// Pays from the caller's in-contract balance (depositNative / depositToken / refunds).
    function createSessionFromDepositForModel(
        bytes32 modelId,
        address host,
        address paymentToken,
        uint256 deposit,
        uint256 pricePerToken,
        uint256 maxDuration,
        uint256 proofInterval,
        uint256 proofTimeoutWindow
    ) external returns (uint256 jobId) {
        if (paymentToken == address(0)) {
            require(userDepositsNative[msg.sender] >= deposit, "Insufficient deposit balance");
            userDepositsNative[msg.sender] -= deposit;
        } else {
            require(
                userDepositsToken[msg.sender][paymentToken] >= deposit,
                "Insufficient deposit balance"
            );
            userDepositsToken[msg.sender][paymentToken] -= deposit;
        }
        jobId = _create(
            CreateParams(
                msg.sender,
                host,
                modelId,
                paymentToken,
                deposit,
                pricePerToken,
                maxDuration,
                proofInterval,
                proofTimeoutWindow
            )
        );
        emit SessionCreatedByDepositor(jobId, msg.sender, host, deposit);
        emit SessionJobCreatedForModel(jobId, msg.sender, host, modelId, deposit);
    }

    function _create(CreateParams memory p) private returns (uint256 jobId) {
        require(_registered(p.host), "Host not registered");
        require(nodeRegistry.isActiveNode(p.host), "Host not active");
        require(nodeRegistry.nodeSupportsModel(p.host, p.modelId), "Host does not support model");
        require(
            nodeRegistry.modelRegistry().isModelApproved(p.modelId), "Model not approved"
        );
        if (p.token == address(0)) {
            require(p.deposit >= MIN_DEPOSIT, "Deposit below minimum");
        } else {
            uint256 minimum = tokenMinDeposits[p.token];
            require(minimum > 0, "Token not accepted");
            require(p.deposit >= minimum, "Deposit below minimum");
        }
        require(p.pricePerToken > 0, "Price must be positive");
        require(
            p.pricePerToken >= nodeRegistry.getModelPricing(p.host, p.modelId, p.token),
            "Price below host minimum"
        );
        require(p.maxDuration > 0, "Invalid max duration");
        require(p.proofInterval >= MIN_PROOF_INTERVAL, "Proof interval below minimum");
        require(
            p.proofTimeoutWindow >= MIN_PROOF_TIMEOUT_WINDOW
                && p.proofTimeoutWindow <= MAX_PROOF_TIMEOUT_WINDOW,
            "Invalid proof timeout window"
        );
        require(
            p.deposit * PRICE_PRECISION / p.pricePerToken >= p.proofInterval,
            "Deposit too small for proof interval"
        );

        jobId = nextJobId++;
        SessionJob storage s = sessionJobs[jobId];
        s.id = jobId;
        s.depositor = p.depositor;
        s.host = p.host;
        s.paymentToken = p.token;
        s.deposit = p.deposit;
        s.pricePerToken = p.pricePerToken;
        s.maxDuration = p.maxDuration;
        s.startTime = block.timestamp;
        s.lastProofTime = block.timestamp;
        s.proofInterval = p.proofInterval;
        s.proofTimeoutWindow = p.proofTimeoutWindow;
        s.status = SessionStatus.Active;
        sessionModel[jobId] = p.modelId;
    }

    function _registered(address host) private view returns (bool) {
        (address operator,,,,,,,) = nodeRegistry.getNodeFullInfo(host);
        return operator != address(0);
    }

    // ---- host proofs and settlement ----

    function submitProofOfWork(
        uint256 jobId,
        uint256 tokensClaimed,
        bytes32 proofHash,
        string calldata proofCID,
        string calldata deltaCID
    ) external {
        SessionJob storage s = sessionJobs[jobId];
        require(s.id != 0, "Job not found");
        require(msg.sender == s.host, "Only the job's host");
        require(s.status == SessionStatus.Active, "Session not active");
        require(tokensClaimed > 0, "No tokens claimed");
        uint256 total = s.tokensUsed + tokensClaimed;
        require(total * s.pricePerToken / PRICE_PRECISION <= s.deposit, "Tokens exceed deposit");
        s.tokensUsed = total;
        s.lastProofTime = block.timestamp;
        s.lastProofHash = proofHash;
        s.lastProofCID = proofCID;
        emit ProofSubmitted(jobId, msg.sender, tokensClaimed, proofHash, proofCID, deltaCID);
    }

    /// The host or the depositor ends the session and settles it.
    function completeSessionJob(uint256 jobId, string calldata conversationCID) external {
        SessionJob storage s = sessionJobs[jobId];
        require(s.id != 0, "Job not found");
        require(msg.sender == s.host || msg.sender == s.depositor, "Only host or depositor");
        require(s.status == SessionStatus.Active, "Session not active");
        s.status = SessionStatus.Completed;
        s.conversationCID = conversationCID;
        uint256 charged = s.tokensUsed == 0 ? minTokensFee : s.tokensUsed;
        (uint256 earned, uint256 refund) = _settle(s, charged);
        emit SessionCompleted(jobId, s.tokensUsed, earned, refund);
    }

    /// Anyone, once block.timestamp > startTime + maxDuration; pays proven tokens only.
    function triggerSessionTimeout(uint256 jobId) external {
        SessionJob storage s = sessionJobs[jobId];
        require(s.id != 0, "Job not found");
        require(s.status == SessionStatus.Active, "Session not active");
        require(block.timestamp > s.startTime + s.maxDuration, "Session not timed out");
        s.status = SessionStatus.TimedOut;
        (uint256 earned, uint256 refund) = _settle(s, s.tokensUsed);
        emit SessionTimedOut(jobId, earned, refund);
    }

    function _settle(SessionJob storage s, uint256 tokens)
        private
        returns (uint256 earned, uint256 refund)
    {
        uint256 cost = tokens * s.pricePerToken / PRICE_PRECISION;
        if (cost > s.deposit) cost = s.deposit;
        uint256 fee = cost * TREASURY_FEE_PERCENT / 100;
        earned = cost - fee;
        refund = s.deposit - cost;
        s.withdrawnByHost = earned;
        s.refundedToUser = refund;
        hostEarnings[s.host][s.paymentToken] += earned;
        treasuryEarnings[s.paymentToken] += fee;
        if (refund > 0) {
            if (s.paymentToken == address(0)) {
                userDepositsNative[s.depositor] += refund;
            } else {
                userDepositsToken[s.depositor][s.paymentToken] += refund;
            }
            emit RefundCreditedToDeposit(s.id, s.depositor, refund, s.paymentToken);
        }
    }

    // ---- balances ----

    function depositNative() external payable {
        require(msg.value > 0, "Zero deposit");
        userDepositsNative[msg.sender] += msg.value;
        emit DepositReceived(msg.sender, msg.value, address(0));
    }

    /// The depositor approves this contract for `amount` first.
    function depositToken(address token, uint256 amount) external {
        require(tokenMinDeposits[token] > 0, "Token not accepted");
        require(amount > 0, "Zero deposit");
        require(
            IERC20Minimal(token).transferFrom(msg.sender, address(this), amount),
            "Token transfer failed"
        );
        userDepositsToken[msg.sender][token] += amount;
        emit DepositReceived(msg.sender, amount, token);
    }

    /// The caller's in-contract balance (deposits and refunds); token 0x0 = ETH.
    function getDepositBalance(address depositor, address token) external view returns (uint256) {
        return token == address(0)
            ? userDepositsNative[depositor]
            : userDepositsToken[depositor][token];
    }

    function withdrawNative(uint256 amount) external {
        require(amount > 0, "Zero amount");
        require(userDepositsNative[msg.sender] >= amount, "Insufficient deposit balance");
        userDepositsNative[msg.sender] -= amount;
        (bool ok,) = payable(msg.sender).call{value: amount}("");
        require(ok, "ETH transfer failed");
        emit WithdrawalProcessed(msg.sender, amount, address(0));
    }

    function withdrawToken(address token, uint256 amount) external {
        require(amount > 0, "Zero amount");
        require(userDepositsToken[msg.sender][token] >= amount, "Insufficient deposit balance");
        userDepositsToken[msg.sender][token] -= amount;
        require(IERC20Minimal(token).transfer(msg.sender, amount), "Token transfer failed");
        emit WithdrawalProcessed(msg.sender, amount, token);
    }

    /// A host withdraws all its earnings in one token (0x0 = ETH).
    function withdrawEarnings(address token) external {
        uint256 amount = hostEarnings[msg.sender][token];
        require(amount > 0, "No earnings");
        hostEarnings[msg.sender][token] = 0;
        if (token == address(0)) {
            (bool ok,) = payable(msg.sender).call{value: amount}("");
            require(ok, "ETH transfer failed");
        } else {
            require(IERC20Minimal(token).transfer(msg.sender, amount), "Token transfer failed");
        }
        emit EarningsWithdrawn(msg.sender, amount, token);
    }
}
