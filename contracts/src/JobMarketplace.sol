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
// - CHAIN.md section 6: the deposit of every active session of a depositor (payer) is "locked";
//   total = free (userDeposits*) + locked. A delegate authorized by a payer creates ERC-20
//   sessions pulled from the payer's wallet through the payer's allowance ("NotDelegate",
//   "ERC20Only"); the payer is the job's depositor (refunds go to the payer's balance) and the
//   delegate may complete the job like the depositor. tokenMaxDeposits (0 = no maximum) caps
//   ERC-20 session deposits ("Deposit above maximum"). Every proof is kept for
//   getProofSubmission ("Bad index" past the last one).
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

    struct ProofSubmission {
        bytes32 proofHash;
        uint256 tokensClaimed;
        uint256 timestamp;
        bool verified;
        string deltaCID;
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
    // token => maximum session deposit; 0 = no maximum
    mapping(address => uint256) public tokenMaxDeposits;
    // deposits of the account's active sessions (token 0x0 = ETH)
    mapping(address => mapping(address => uint256)) private lockedBalances;
    // payer => delegate => may create sessions paid by the payer
    mapping(address => mapping(address => bool)) public isAuthorizedDelegate;
    mapping(uint256 => address) public sessionDelegate;
    mapping(uint256 => ProofSubmission[]) private proofSubmissions;
    mapping(address => uint256[]) public userSessions;
    mapping(address => uint256[]) public hostSessions;
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
    event TokenAccepted(address indexed token, uint256 minDeposit, uint256 maxDeposit);
    event TokenMinDepositUpdated(
        address indexed token, uint256 oldMinDeposit, uint256 newMinDeposit
    );
    event TokenMaxDepositUpdated(
        address indexed token, uint256 oldMaxDeposit, uint256 newMaxDeposit
    );
    event DelegateAuthorized(address indexed depositor, address indexed delegate, bool authorized);
    event SessionCreatedByDelegate(
        uint256 indexed sessionId,
        address indexed payer,
        address indexed delegate,
        address host,
        bytes32 modelId,
        uint256 amount
    );
    event SessionCompletedBy(
        uint256 indexed jobId,
        address indexed completedBy,
        uint256 tokensUsed,
        uint256 paymentAmount,
        uint256 refundAmount
    );

    modifier onlyOwner() {
        require(msg.sender == owner, "Only owner");
        _;
    }

    /// `stableToken` (USDC) is accepted with a minimum session deposit of 500000 (0.50 USDC)
    /// and a maximum of 1000e6 (1,000 USDC).
    constructor(NodeRegistry registry, address stableToken) {
        owner = msg.sender;
        nodeRegistry = registry;
        if (stableToken != address(0)) {
            tokenMinDeposits[stableToken] = 500000;
            tokenMaxDeposits[stableToken] = 1000e6;
            emit TokenAccepted(stableToken, 500000, 1000e6);
        }
    }

    // ---- admin (tests) ----

    function addAcceptedToken(address token, uint256 minDeposit, uint256 maxDeposit)
        external
        onlyOwner
    {
        require(token != address(0), "Invalid token");
        require(minDeposit > 0, "Invalid minimum");
        require(maxDeposit == 0 || maxDeposit >= minDeposit, "Invalid maximum");
        tokenMinDeposits[token] = minDeposit;
        tokenMaxDeposits[token] = maxDeposit;
        emit TokenAccepted(token, minDeposit, maxDeposit);
    }

    /// Accept a token with this minimum deposit (0 = no longer accepted).
    function setTokenMinDeposit(address token, uint256 minDeposit) external onlyOwner {
        updateTokenMinDeposit(token, minDeposit);
    }

    function updateTokenMinDeposit(address token, uint256 minDeposit) public onlyOwner {
        require(token != address(0), "Invalid token");
        emit TokenMinDepositUpdated(token, tokenMinDeposits[token], minDeposit);
        tokenMinDeposits[token] = minDeposit;
    }

    /// 0 = no maximum.
    function updateTokenMaxDeposit(address token, uint256 maxDeposit) external onlyOwner {
        require(token != address(0), "Invalid token");
        emit TokenMaxDepositUpdated(token, tokenMaxDeposits[token], maxDeposit);
        tokenMaxDeposits[token] = maxDeposit;
    }

    function acceptedTokens(address token) external view returns (bool) {
        return tokenMinDeposits[token] > 0;
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

    // ---- delegation ----

    /// The payer lets `delegate` create ERC-20 sessions paid from the payer's wallet (through
    /// the payer's allowance to this contract), or stops it.
    function authorizeDelegate(address delegate, bool authorized) external {
        require(delegate != address(0) && delegate != msg.sender, "BadDelegateParams");
        isAuthorizedDelegate[msg.sender][delegate] = authorized;
        emit DelegateAuthorized(msg.sender, delegate, authorized);
    }

    function isDelegateAuthorized(address depositor, address delegate)
        external
        view
        returns (bool)
    {
        return isAuthorizedDelegate[depositor][delegate];
    }

    function createSessionForModelAsDelegate(
        address payer,
        bytes32 modelId,
        address host,
        address paymentToken,
        uint256 amount,
        uint256 pricePerToken,
        uint256 maxDuration,
        uint256 proofInterval,
        uint256 proofTimeoutWindow
    ) external returns (uint256 jobId) {
        require(payer != address(0), "BadDelegateParams");
        require(isAuthorizedDelegate[payer][msg.sender], "NotDelegate");
        require(paymentToken != address(0), "ERC20Only");
        jobId = _create(
            CreateParams(
                payer,
                host,
                modelId,
                paymentToken,
                amount,
                pricePerToken,
                maxDuration,
                proofInterval,
                proofTimeoutWindow
            )
        );
        sessionDelegate[jobId] = msg.sender;
        require(
            IERC20Minimal(paymentToken).transferFrom(payer, address(this), amount),
            "Token transfer failed"
        );
        emit SessionCreatedByDelegate(jobId, payer, msg.sender, host, modelId, amount);
        emit SessionJobCreatedForModel(jobId, payer, host, modelId, amount);
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
            uint256 maximum = tokenMaxDeposits[p.token];
            require(maximum == 0 || p.deposit <= maximum, "Deposit above maximum");
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
        lockedBalances[p.depositor][p.token] += p.deposit;
        userSessions[p.depositor].push(jobId);
        hostSessions[p.host].push(jobId);
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
        proofSubmissions[jobId].push(
            ProofSubmission(proofHash, tokensClaimed, block.timestamp, false, deltaCID)
        );
        emit ProofSubmitted(jobId, msg.sender, tokensClaimed, proofHash, proofCID, deltaCID);
    }

    /// A proof of the session, 0-based in submission order ("Bad index" past the last).
    function getProofSubmission(uint256 sessionId, uint256 proofIndex)
        external
        view
        returns (
            bytes32 proofHash,
            uint256 tokensClaimed,
            uint256 timestamp,
            bool verified,
            string memory deltaCID
        )
    {
        ProofSubmission[] storage all = proofSubmissions[sessionId];
        require(proofIndex < all.length, "Bad index");
        ProofSubmission storage p = all[proofIndex];
        return (p.proofHash, p.tokensClaimed, p.timestamp, p.verified, p.deltaCID);
    }

    /// The host, the depositor or the delegate that created it ends the session and settles it.
    function completeSessionJob(uint256 jobId, string calldata conversationCID) external {
        SessionJob storage s = sessionJobs[jobId];
        require(s.id != 0, "Job not found");
        require(
            msg.sender == s.host || msg.sender == s.depositor
                || (msg.sender == sessionDelegate[jobId] && msg.sender != address(0)),
            "Only host or depositor"
        );
        require(s.status == SessionStatus.Active, "Session not active");
        s.status = SessionStatus.Completed;
        s.conversationCID = conversationCID;
        uint256 charged = s.tokensUsed == 0 ? minTokensFee : s.tokensUsed;
        (uint256 earned, uint256 refund) = _settle(s, charged);
        emit SessionCompleted(jobId, s.tokensUsed, earned, refund);
        emit SessionCompletedBy(jobId, msg.sender, s.tokensUsed, s.deposit - refund, refund);
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
        lockedBalances[s.depositor][s.paymentToken] -= s.deposit;
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

    function getDepositBalances(address account, address[] calldata tokens)
        external
        view
        returns (uint256[] memory balances)
    {
        balances = new uint256[](tokens.length);
        for (uint256 i = 0; i < tokens.length; i++) {
            balances[i] = tokens[i] == address(0)
                ? userDepositsNative[account]
                : userDepositsToken[account][tokens[i]];
        }
    }

    /// Deposits of the account's active sessions.
    function getLockedBalanceNative(address account) external view returns (uint256 locked) {
        return lockedBalances[account][address(0)];
    }

    function getLockedBalanceToken(address account, address token)
        external
        view
        returns (uint256 locked)
    {
        return lockedBalances[account][token];
    }

    /// Free (withdrawable) + locked.
    function getTotalBalanceNative(address account) external view returns (uint256) {
        return userDepositsNative[account] + lockedBalances[account][address(0)];
    }

    function getTotalBalanceToken(address account, address token)
        external
        view
        returns (uint256)
    {
        return userDepositsToken[account][token] + lockedBalances[account][token];
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
